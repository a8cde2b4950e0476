"""Every setting is reachable with `-p`, and none is silently dropped."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from geolib.config import SECTIONS
from geolib.apps.pipeline import check_parameters, discover, notebook_parameters
from geolib.profiles import NOTEBOOK_EXTRAS, NOTEBOOK_SECTIONS, from_parameters, section_keys

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {p.name[:2]: p for p in discover()}


@pytest.mark.parametrize("number", sorted(NOTEBOOK_SECTIONS))
def test_parameters_cell_lists_its_dataclass_fields_and_documented_extras(number):
    """The cell, the section's dataclass (geolib/config.py) and the profiles cannot drift apart."""
    names = notebook_parameters(NOTEBOOKS[number])
    assert len(names) == len(set(names)), "a name is assigned twice"
    expected = set(SECTIONS[NOTEBOOK_SECTIONS[number]].settable()) | set(NOTEBOOK_EXTRAS[number])
    assert set(names) == expected, (f"missing from the cell: {sorted(expected - set(names))}; "
                                    f"not a dataclass field nor a documented extra: {sorted(set(names) - expected)}")


def test_section_keys_are_the_dataclass_fields_and_extras_are_no_fields():
    for number, section in NOTEBOOK_SECTIONS.items():
        assert section_keys(section) == SECTIONS[section].settable()
        clash = set(NOTEBOOK_EXTRAS[number]) & set(SECTIONS[section].settable())
        assert not clash, f"notebook {number}: {clash} are both a setting and an extra"


def test_every_notebook_has_a_section_and_extras():
    assert set(NOTEBOOKS) == set(NOTEBOOK_SECTIONS) == set(NOTEBOOK_EXTRAS)


def test_from_parameters_takes_every_section_key_and_keeps_profile_values_for_none():
    namespace = {k: None for k in section_keys("phase1")}
    namespace.update(sampling="gps", flip_tta=False, unrelated="x")
    cfg = from_parameters("smoke", "phase1", namespace)
    assert cfg["sampling"] == "gps" and cfg["flip_tta"] is False and "unrelated" not in cfg
    assert cfg["epochs"] == 1  # None kept the profile's value


def test_unknown_and_renamed_names_fail_naming_the_accepted_ones():
    nbs = list(NOTEBOOKS.values())
    with pytest.raises(ValueError, match="not_a_parameter.*accepted: .*sampling"):
        check_parameters({"not_a_parameter": 1}, nbs)
    with pytest.raises(ValueError, match="u1652_root.*vpr_root"):
        check_parameters({"data_root": "/data/University-1652"}, nbs)
    # a name only some notebooks take goes to those notebooks only
    shares = check_parameters({"sampling": "random", "vpr_root": "/x"}, nbs)
    assert shares[NOTEBOOKS["02"]] == {"sampling": "random"}
    assert shares[NOTEBOOKS["04"]] == {"vpr_root": "/x"} and shares[NOTEBOOKS["03"]] == {}
    with pytest.raises(ValueError, match="sampling"):  # not in the run's notebooks
        check_parameters({"sampling": "random"}, [NOTEBOOKS["04"]])


def test_cli_rejects_an_unknown_parameter_before_anything_runs(tmp_path):
    env = {"GEOLIB_OUTPUTS": str(tmp_path / "out"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "geolib", "run", "--profile", "smoke", "-p", "not_a_parameter", "1"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert res.returncode == 2 and "not_a_parameter" in res.stderr and "accepted:" in res.stderr
    assert not (tmp_path / "out").exists(), "nothing ran, nothing was written"


def _setup_namespace(number: str, parameters: dict) -> dict:
    """Run a notebook's parameters cell, papermill's injected overrides, and its setup cell in-process."""
    nb = json.loads(NOTEBOOKS[number].read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    ns: dict = {}
    exec("".join(code[0]["source"]), ns)
    ns.update(parameters)
    ns["profile"] = "smoke"
    exec("".join(code[1]["source"]).rsplit("\n", 1)[0], ns)  # the last line only displays
    return ns


def test_sampling_and_flip_tta_reach_notebook_02s_configuration():
    ns = _setup_namespace("02", {"sampling": "gps", "flip_tta": True, "weight_decay": 0.5})
    assert ns["cfg"]["sampling"] == "gps" and ns["cfg"]["flip_tta"] is True and ns["cfg"]["weight_decay"] == 0.5
    ns = _setup_namespace("02", {"sampling": "random", "flip_tta": False})
    assert ns["cfg"]["sampling"] == "random" and ns["cfg"]["flip_tta"] is False
    from geolib.training.crossview import phase1_fit_options, phase1_train_config

    ns = _setup_namespace("02", {"sampling": "gps", "flip_tta": True})
    assert phase1_train_config(ns["cfg"]).sampling == "gps" and phase1_fit_options(ns["cfg"])["flip"] is True


def test_loop_settings_reach_notebook_02s_train_config():
    """`-p grad_clip 0.5` etc. reach the loop: before these keys existed no profile key could."""
    from geolib.training.crossview import phase1_train_config

    ns = _setup_namespace("02", {"grad_clip": 0.5, "freeze": [".backbone."], "backbone_lr_scale": 0.25,
                                 "gps_near": 4, "gps_random": 2, "gps_pool": 9, "distill_loss": "mse",
                                 "distill_weight": 0.3})
    tc = phase1_train_config(ns["cfg"])
    assert (tc.grad_clip, tc.freeze, tc.backbone_lr_scale) == (0.5, (".backbone.",), 0.25)
    assert (tc.gps_near, tc.gps_random, tc.gps_pool) == (4, 2, 9)
    assert ns["cfg"]["distill_loss"] == "mse" and ns["cfg"]["distill_weight"] == 0.3
