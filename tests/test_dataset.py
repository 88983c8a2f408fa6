"""`make_dataset` and `Dataset`: shapes and splits, noise, save/load and corruption checks."""

import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynamics as d

SPLITS = ("train", "val", "test", "test_ood", "test_continuation")
#: n_train == n_val: train and val noise have one shape, so its sampler compiles once
SIZES = dict(n_train=3, n_val=3, n_test=6, dt=0.1, t_train=2.0, t_end=6.0)
T_TRAIN, T_ALL = 21, 61  # t_train / dt + 1, t_end / dt + 1
NOISE = 0.01


@pytest.fixture(scope="module")
def system():
    return d.CoupledPendulums([0.8, 1.0, 1.3], d.chain_coupling(3, 0.4))


@pytest.fixture(scope="module")
def noisy(system):
    return d.make_dataset(system, key=jax.random.key(0), noise=NOISE, **SIZES)


@pytest.fixture(scope="module")
def clean(system):
    return d.make_dataset(system, key=jax.random.key(0), noise=0.0, **SIZES)


def test_shapes_and_time_grid(noisy, system):
    dim = system.state_dim
    assert noisy.train.shape == (3, T_TRAIN, dim)
    assert noisy.val.shape == (3, T_TRAIN, dim)
    assert noisy.test.shape == (6, T_ALL, dim)
    assert noisy.test_ood.shape == (6, T_ALL, dim)
    assert noisy.test_continuation.shape == (3, T_ALL, dim)  # min(n_train, n_test) records
    np.testing.assert_allclose(noisy.ts, 0.1 * np.arange(T_ALL), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(noisy.ts_train, noisy.ts[:T_TRAIN])
    assert noisy.ts_train[-1] == pytest.approx(2.0)
    assert noisy.t_end == pytest.approx(6.0)
    assert (noisy.t_train, noisy.dt, noisy.n_train_steps, noisy.state_dim) == (
        2.0,
        0.1,
        T_TRAIN,
        dim,
    )
    for name in SPLITS:
        assert noisy.split(name) is getattr(noisy, name)
        assert np.all(np.isfinite(noisy.split(name)))
    with pytest.raises(ValueError, match="split"):
        noisy.split("validation")


def test_initial_states_are_distinct_across_splits(clean):
    starts = np.concatenate(
        [clean.train[:, 0], clean.val[:, 0], clean.test[:, 0], clean.test_ood[:, 0]]
    )
    assert len(np.unique(starts.round(12), axis=0)) == len(starts)


def test_train_and_val_are_noisy_test_is_clean(noisy, clean, system):
    """Same key: the clean and noisy datasets differ by exactly the added noise."""
    for name in ("test", "test_ood"):
        np.testing.assert_array_equal(getattr(noisy, name), getattr(clean, name))
    for name in ("train", "val"):
        diff = getattr(noisy, name) - getattr(clean, name)
        assert diff.std() == pytest.approx(NOISE, rel=0.15)
        assert abs(diff.mean()) < 5 * NOISE / np.sqrt(diff.size)
    # the clean splits are real trajectories: the energy is conserved along them
    for name in ("train", "val", "test", "test_ood"):
        e = np.asarray(system.energy(getattr(clean, name)))
        assert np.abs(e - e[:, :1]).max() <= 1e-6 * np.abs(e).max()


def test_continuation_continues_the_clean_training_records(noisy, clean, system):
    """`test_continuation` is the training records themselves, clean, run on to `t_end`: its
    first `T_train` states are `train` before the noise; after that it is a trajectory of the
    same energy (not a held-out initial state: compared with `test` it starts elsewhere)."""
    np.testing.assert_array_equal(clean.test_continuation[:, :T_TRAIN], clean.train)
    np.testing.assert_array_equal(noisy.test_continuation, clean.test_continuation)
    diff = noisy.train - noisy.test_continuation[:, :T_TRAIN]
    assert diff.std() == pytest.approx(NOISE, rel=0.15)
    e = np.asarray(system.energy(clean.test_continuation))
    assert np.abs(e - e[:, :1]).max() <= 1e-6 * np.abs(e).max()
    assert not np.any(np.isin(clean.test_continuation[:, 0].round(12), clean.test[:, 0].round(12)))


def test_n_continuation_is_a_subset_of_the_training_records(system):
    sizes = dict(SIZES, n_train=5)
    sub = d.make_dataset(system, key=jax.random.key(0), n_continuation=2, **sizes)
    whole = d.make_dataset(system, key=jax.random.key(0), n_continuation=5, **sizes)
    assert sub.test_continuation.shape[0] == 2 and whole.test_continuation.shape[0] == 5
    np.testing.assert_array_equal(sub.test_continuation[:, :T_TRAIN], sub.train[:2])
    for bad in (0, 6):
        with pytest.raises(ValueError, match="n_continuation"):
            d.make_dataset(system, key=jax.random.key(0), n_continuation=bad, **sizes)


def test_deterministic_given_the_key(noisy, system):
    again = d.make_dataset(system, key=jax.random.key(0), noise=NOISE, **SIZES)
    for name in ("ts", *SPLITS):
        np.testing.assert_array_equal(getattr(again, name), getattr(noisy, name))


def test_ood_split_has_higher_energy(clean, system):
    e_test = system.energy(jnp.asarray(clean.test[:, 0]))
    e_ood = system.energy(jnp.asarray(clean.test_ood[:, 0]))
    assert float(e_ood.mean()) > 1.5 * float(e_test.mean())


# ------------------------------------------------------------- save/load
def _assert_same(a: d.Dataset, b: d.Dataset):
    for name in ("ts", *SPLITS):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    assert (a.t_train, a.dt) == (b.t_train, b.dt)


def test_save_load_round_trip(noisy, tmp_path):
    path = noisy.save(tmp_path / "sub" / "pendulums")  # suffix added, folders created
    assert path == tmp_path / "sub" / "pendulums.npz" and path.exists()
    assert not list(path.parent.glob("*.tmp"))
    loaded = d.Dataset.load(path)
    _assert_same(noisy, loaded)
    assert type(loaded.system) is d.CoupledPendulums
    np.testing.assert_array_equal(loaded.system.omega, noisy.system.omega)
    np.testing.assert_array_equal(loaded.system.coupling, noisy.system.coupling)
    assert loaded.system.parameters() == noisy.system.parameters()
    for k, v in noisy.metadata.items():
        assert loaded.metadata[k] == v, k
    for k in ("format", "package_version", "system", "t_train", "dt"):
        assert k in loaded.metadata


def _dummy_dataset(system, seed=0):
    """A `Dataset` with random arrays: enough to exercise save/load for any system."""
    rng = np.random.default_rng(seed)
    dim = system.state_dim
    return d.Dataset(
        system=system,
        ts=0.5 * np.arange(7),
        t_train=1.5,
        dt=0.5,
        train=rng.normal(size=(3, 4, dim)),
        val=rng.normal(size=(2, 4, dim)),
        test=rng.normal(size=(2, 7, dim)),
        test_ood=rng.normal(size=(2, 7, dim)),
        metadata={"seed": [0, seed], "note": "dummy"},
        test_continuation=rng.normal(size=(2, 7, dim)),
    )


@pytest.mark.parametrize(
    "system",
    [
        d.HarmonicChain([1.0, 2.0], d.chain_coupling(2, 0.1)),
        d.CoupledVanDerPol([1.0, 1.5, 0.7], 2.5, d.ring_coupling(3, 0.2)),
        d.HuygensClocks(
            [1.0, 1.01],
            gamma=0.02,
            mu=0.2,
            theta0=0.3,
            beam_omega=2.0,
            beam_gamma=0.3,
            mass_ratio=0.1,
        ),
        d.Kuramoto([0.3, -1.2, 2.0], d.all_to_all_coupling(3, 0.4)),
        d.DoublePendulum(1.0, 2.0, 0.5, 1.5, 9.81, amplitude=2.0),
    ],
    ids=lambda s: type(s).__name__,
)
def test_every_system_is_rebuilt_exactly(system, tmp_path):
    ds = _dummy_dataset(system)
    loaded = d.Dataset.load(ds.save(tmp_path / "ds.npz"))
    _assert_same(ds, loaded)
    assert type(loaded.system) is type(system)
    for name in system._param_names():
        np.testing.assert_array_equal(getattr(loaded.system, name), getattr(system, name))


def test_hamiltonian_dataset_needs_its_system(tmp_path):
    ham = d.HamiltonianSystem(lambda q, p: 0.5 * jnp.sum(p**2 + q**2) + 0.1 * q[0] * q[1], 2)
    path = _dummy_dataset(ham).save(tmp_path / "ham.npz")
    assert d.Dataset.load(path).system is None  # a callable cannot be stored
    loaded = d.Dataset.load(path, system=ham)
    assert loaded.system is ham
    _assert_same(_dummy_dataset(ham), loaded)
    with pytest.raises(ValueError, match="HamiltonianSystem"):
        d.Dataset.load(path, system=d.DoublePendulum())


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.5, 0.9, 0.999])
def test_truncated_file_raises(fraction, tmp_path):
    path = _dummy_dataset(d.DoublePendulum()).save(tmp_path / "ds.npz")
    data = path.read_bytes()
    path.write_bytes(data[: int(fraction * len(data))])
    with pytest.raises(ValueError, match="ds.npz"):
        d.Dataset.load(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(ValueError, match="unreadable"):
        d.Dataset.load(tmp_path / "nothing.npz")


def test_one_flipped_byte_in_an_array_raises(tmp_path):
    ds = _dummy_dataset(d.DoublePendulum())
    path = ds.save(tmp_path / "ds.npz")
    data = bytearray(path.read_bytes())
    raw = np.ascontiguousarray(ds.test).tobytes()
    at = bytes(data).find(raw)
    assert at > 0
    data[at + len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        d.Dataset.load(path)


def _rewrite(path, *, change_array=None, change_meta=None):
    """Rewrites the npz (a valid zip) with one array or the metadata changed, checksum kept."""
    with np.load(path) as z:
        contents = {k: z[k] for k in z.files}
    meta = json.loads(str(contents.pop("metadata")))
    if change_array:
        change_array(contents)
    if change_meta:
        change_meta(meta)
    with open(path, "wb") as f:
        np.savez(f, metadata=np.array(json.dumps(meta, sort_keys=True)), **contents)
    assert zipfile.is_zipfile(path)


@pytest.mark.parametrize("split", ["ts", *SPLITS])
def test_altered_array_with_old_metadata_raises(split, tmp_path):
    path = _dummy_dataset(d.DoublePendulum()).save(tmp_path / "ds.npz")

    def alter(arrays):
        a = arrays[split].copy()
        raw = a.view(np.uint8).reshape(-1)
        raw[raw.size // 2] ^= 0x01  # one bit of one byte
        arrays[split] = a

    _rewrite(path, change_array=alter)
    with pytest.raises(ValueError, match="checksum"):
        d.Dataset.load(path)


def test_altered_metadata_raises(tmp_path):
    path = _dummy_dataset(d.DoublePendulum()).save(tmp_path / "ds.npz")
    _rewrite(path, change_meta=lambda m: m["system"]["params"].update(g=1.62))
    with pytest.raises(ValueError, match="checksum"):
        d.Dataset.load(path)


def test_a_file_of_the_older_format_is_refused(noisy, tmp_path):
    """Format 1 (before `test_continuation`) must not load as a dataset without one."""
    path = noisy.save(tmp_path / "new.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("metadata")))
    meta["format"] = 1
    np.savez(tmp_path / "old.npz", metadata=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(ValueError, match="format"):
        d.Dataset.load(tmp_path / "old.npz")


def test_missing_array_raises(tmp_path):
    path = _dummy_dataset(d.DoublePendulum()).save(tmp_path / "ds.npz")
    _rewrite(path, change_array=lambda arrays: arrays.pop("val"))
    with pytest.raises(ValueError, match="val"):
        d.Dataset.load(path)


def test_concurrent_saves_of_the_same_dataset_do_not_collide(noisy, tmp_path):
    """Several processes of one study may build and save the same dataset at once (the
    two-process study did, and failed once in a while): each writer renames only its own
    temporary file, so every save succeeds and the file is whole."""
    import threading

    path = tmp_path / "shared.npz"
    errors = []

    def save():
        try:
            for _ in range(10):
                noisy.save(path)
        except Exception as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=save) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _assert_same(d.Dataset.load(path), noisy)
    assert [p.name for p in tmp_path.iterdir()] == ["shared.npz"]
