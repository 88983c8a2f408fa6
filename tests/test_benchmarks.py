"""The benchmark sections at small sizes on the CPU: what they compute is checked (the LSTM
paths train the same model, a `fit` chunk runs its steps, the simulators agree with scipy),
and the sections meant for a GPU (`simulate`'s large batch, ensemble scaling) run here too,
so that they are ready when a GPU is."""

import argparse
import json

import jax
import numpy as np
import pytest

from experiments import _bench_models, benchmarks

TINY = dict(hidden=8, batch=4, seq=6, channels=2)


def _params(state):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(state()[0])])


def test_lstm_step_paths_train_the_same_model():
    """`model(batch)`, `jax.vmap(model)` and a `fit` chunk of 3 steps are the same training:
    one call of the chunk equals three single steps (and not one)."""
    sizes = tuple(TINY.values())
    batch_run, _, batch_state = _bench_models._jax_lstm_step(*sizes)  # one step taken
    _, _, vmap_state = _bench_models._jax_lstm_step(*sizes, call="vmap")
    _, _, chunk_state = _bench_models._jax_lstm_step(*sizes, steps_per_call=3)
    after_one = _params(batch_state)
    np.testing.assert_allclose(_params(vmap_state), after_one, rtol=1e-6, atol=1e-7)
    batch_run()
    batch_run()
    np.testing.assert_allclose(_params(chunk_state), _params(batch_state), rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(_params(chunk_state) - after_one)) > 1e-4


def test_lstm_step_without_torch_reports_jax_alone(monkeypatch):
    monkeypatch.setattr(_bench_models, "_torch_or_none", lambda: None)
    res = _bench_models.lstm_step(**TINY, repeats=1, steps_per_call=2)
    for key in ("jax_step_seconds", "jax_vmap_step_seconds", "jax_fit_chunk_step_seconds"):
        assert res[key] > 0
    assert not any(k.startswith(("torch", "speedup")) for k in res)
    ens = _bench_models.lstm_ensemble(members=2, **TINY, repeats=1, steps_per_call=2)
    assert ens["jax_seconds_all_members"] > 0 and ens["jax_fit_chunk_seconds_all_members"] > 0
    assert "throughput_ratio_vs_torch" not in ens


def test_lstm_step_against_torch():
    torch = pytest.importorskip("torch")
    res = _bench_models.lstm_step(**TINY, repeats=1, steps_per_call=2)
    assert res["torch_version"] == torch.__version__ and res["torch_device"] == "cpu"
    t_torch = min(res["torch_step_seconds"], res["torch_1_thread_step_seconds"])
    assert res["speedup_vs_torch"] == pytest.approx(t_torch / res["jax_step_seconds"])


def test_ensemble_scaling_rows_and_out_of_memory(monkeypatch):
    res = _bench_models.lstm_ensemble_scaling(members=(1, 2), **TINY, repeats=1)
    assert [r["members"] for r in res["rows"]] == [1, 2]
    assert res["rows"][0]["throughput_vs_one_member"] == 1.0
    for r in res["rows"]:
        assert r["member_steps_per_second"] == pytest.approx(r["members"] / r["seconds_per_step"])

    real = _bench_models._jax_lstm_step

    def exhausted_above_two(*args, members=1, **kw):
        if members > 2:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return real(*args, members=members, **kw)

    monkeypatch.setattr(_bench_models, "_jax_lstm_step", exhausted_above_two)
    res = _bench_models.lstm_ensemble_scaling(members=(1, 4, 8), **TINY, repeats=1)
    assert res["rows"][-1] == {"members": 4, "error": "out of memory"}
    assert len(res["rows"]) == 2  # the list ends at the first size that does not fit

    def broken(*args, **kw):
        raise RuntimeError("INVALID_ARGUMENT: something else")

    monkeypatch.setattr(_bench_models, "_jax_lstm_step", broken)
    with pytest.raises(RuntimeError, match="INVALID_ARGUMENT"):
        _bench_models.lstm_ensemble_scaling(members=(1,), **TINY, repeats=1)


def test_heap_reuse_reruns_the_step_in_a_process_with_the_malloc_settings():
    res = _bench_models.lstm_step_heap_reuse(**TINY, repeats=1)
    assert res["malloc_env"] == _bench_models.HEAP_REUSE_ENV
    assert res["sizes"] == TINY and res["jax_step_seconds"] > 0
    with pytest.raises(RuntimeError, match="hidden and layers must be >= 1"):  # the child's error
        _bench_models.lstm_step_heap_reuse(**{**TINY, "hidden": 0}, repeats=1)


def test_simulate_section_with_a_large_batch_on_the_cpu():
    """The GPU's large-batch row, forced on the CPU at a small size; diffrax and solve_ivp
    agree to the tolerance both were given."""
    args = argparse.Namespace(
        batch=4, scipy_subset=2, repeats=1, seed=0, gpu_batch=65_536, large_batch=8
    )
    res = benchmarks.bench_simulate(args)
    big = res["large_batch"]
    assert big["backend"] == "cpu" and big["batch"] == 8 and big["trajectories_per_s"] > 0
    for m in ("RK45", "DOP853"):
        assert res["scipy"][m]["max_abs_difference_to_simulate"] < 1e-5
    assert res["simulate_dopri8"]["max_abs_difference_to_tsit5"] < 1e-5


def test_main_writes_and_merges_sections(tmp_path, capsys):
    out = tmp_path / "bench"
    common = ["--out", str(out), "--repeats", "1", "--lstm-sizes", "8", "4", "6", "2"]
    benchmarks.main(["--sections", "lstm_ensemble_scaling", "--members", "1", "2", *common])
    assert "rows[1].members: 2" in capsys.readouterr().out
    benchmarks.main(["--sections", "ig_memory", *common[:2]])
    data = json.loads((out / "benchmarks.json").read_text())
    assert set(data["sections"]) == {"lstm_ensemble_scaling", "ig_memory"}  # merged, not replaced
    assert data["sections"]["lstm_ensemble_scaling"]["sizes"] == TINY

    (out / "benchmarks.json").write_text("{ not json")
    path = benchmarks.write_results(out, {"jax": jax.__version__}, {"x": {"a": 1.0}})
    assert "not valid JSON" in capsys.readouterr().err
    assert json.loads(path.read_text())["sections"]["x"]["a"] == 1.0
