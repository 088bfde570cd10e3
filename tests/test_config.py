from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from whisper_sv.core.config import dump_options, load_options, parse_overrides


@dataclass(frozen=True)
class Opts:
    lr: float = 1e-5  # learning rate
    steps: int = 10  # optimizer steps
    schedule: Literal["linear", "cosine"] = "linear"
    freeze: bool = False
    name: str | None = None
    layers: tuple[int, ...] = (1, 2)


def test_overrides_are_typed_yaml_scalars():
    got = parse_overrides(["lr=3e-4", "steps=5", "freeze=true", "name=", "layers=[3, 4]"])
    assert got == {"lr": 3e-4, "steps": 5, "freeze": True, "name": None, "layers": [3, 4]}


@pytest.mark.parametrize("bad", ["lr", "=3", ""])
def test_override_without_equals_is_rejected(bad):
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides([bad])


def test_yaml_then_overrides(tmp_path: Path):
    path = tmp_path / "o.yaml"
    path.write_text("lr: 0.001\nsteps: 7\nschedule: cosine\n")
    opts = load_options(Opts, path, {"steps": 9})
    assert opts == Opts(lr=0.001, steps=9, schedule="cosine")


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_options(Opts, overrides={"lr": 1}).lr == 1.0
    with pytest.raises(ValueError, match="'steps'.*integer"):
        load_options(Opts, overrides={"steps": 2.5})


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) lrate.*valid options: .*lr"):
        load_options(Opts, overrides={"lrate": 1e-3})


@pytest.mark.parametrize(
    ("key", "value"),
    [("freeze", "yes"), ("schedule", "step"), ("layers", "1,2"), ("name", 3)],
)
def test_wrong_types_are_rejected(key, value):
    with pytest.raises(ValueError, match=key):
        load_options(Opts, overrides={key: value})


def test_dump_then_load_round_trip(tmp_path: Path):
    opts = Opts(lr=2e-5, steps=3, schedule="cosine", freeze=True, name="x", layers=(5,))
    dump_options(opts, tmp_path / "o.yaml")
    assert load_options(Opts, tmp_path / "o.yaml") == opts


def test_missing_file_and_non_mapping(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_options(Opts, tmp_path / "nope.yaml")
    (tmp_path / "l.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_options(Opts, tmp_path / "l.yaml")


def test_yaml_exponent_without_dot_is_a_float(tmp_path: Path):
    (tmp_path / "o.yaml").write_text("lr: 3e-4\n")
    assert load_options(Opts, tmp_path / "o.yaml").lr == pytest.approx(3e-4)
