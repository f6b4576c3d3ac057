"""The engine's command line: settings that cannot work stop it at once, with the setting's name."""

from __future__ import annotations

import pytest
import torch

from workers.moe.__main__ import _parser, main
from workers.moe.query_embedder import weight_dtype


def test_it_refuses_unknown_query_weights_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--query-weights", "int4"])

    assert stopped.value.code == 2
    assert "MOE_QUERY_WEIGHTS" in capsys.readouterr().err


def test_it_reads_the_query_weights_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOE_QUERY_WEIGHTS", "fp16")

    assert _parser().parse_args([]).query_weights == "fp16"
    assert weight_dtype("fp16") == torch.float16
    assert weight_dtype("auto") is None  # QueryEmbedder's default_dtype()


def test_it_refuses_unknown_engine_weights_from_the_environment_before_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ENGINE_WEIGHTS", "fp16")

    with pytest.raises(SystemExit) as stopped:
        main([])

    assert stopped.value.code == 2
    assert "ENGINE_WEIGHTS" in capsys.readouterr().err


def test_it_reads_the_engine_weights_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _parser().parse_args([]).weights == "auto"
    monkeypatch.setenv("ENGINE_WEIGHTS", "fp32")
    assert _parser().parse_args([]).weights == "fp32"
