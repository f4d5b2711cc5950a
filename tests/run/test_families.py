"""The family contract: every registered family (and a toy one added by a test module) runs every command.

One parametrized test covers every family (the torchvision / zuko pattern): ``train`` on the family's
small ``example`` config, ``evaluate`` again, ``sample``, ``analyze`` and ``compare``; a command a
family does not support is one clear line naming the command and the family.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_support import fails, run_cli
from toy_family import exact_test_log_likelihood

from pyro_gen.config import from_dict
from pyro_gen.data import dataset_info, load_dataset
from pyro_gen.families import Unsupported, family_names, get_family
from pyro_gen.run import RunDir, analyze_run, compare, evaluate_run, sample_run, train

FAMILIES = family_names()  # the built-in ones and the toy one (registered on import above)


def test_the_toy_family_is_registered_beside_the_built_in_ones():
    assert {"vae", "gmm", "gan", "toy_gaussian"} <= set(FAMILIES)


@pytest.mark.parametrize("kind", FAMILIES)
def test_every_family_runs_every_command_or_says_why_not(kind, tmp_path):
    family = get_family(kind)
    config = from_dict(family.example)
    assert config.model.kind == kind
    run_dir = tmp_path / "run"
    scores = train(config, run_dir)
    summary = scores.summary()
    assert summary and "\n" not in summary
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written == json.loads(json.dumps(scores.to_json()))  # metrics.json is the typed record
    assert family.scores.from_json(written).to_json() == written
    assert RunDir(run_dir).is_complete(config)
    again = evaluate_run(run_dir, figures=False)
    assert json.loads(json.dumps(again.to_json())) == written or kind == "gan"  # a GAN's figures draw no random state
    for command, call in [
        ("sample", lambda: sample_run(run_dir, num=9)),
        ("analyze", lambda: analyze_run(run_dir, draws=20, **({"points": 3} if kind == "vae" else {}))),
    ]:
        if not family.supports(command):
            with pytest.raises(Unsupported) as info:
                call()
            assert f"'{command}' is not available for model.kind: {kind}" in str(info.value) and "\n" not in str(info.value)
        else:
            paths = call()
            assert paths and all(Path(p).exists() for p in paths)
    if family.supports("sample") and dataset_info(config.data.name, config.data.binarize).image:
        # what 'sample' writes for images, and what a figure across families draws: seeded images in [0, 1]
        images, how = family.sample_images(config, RunDir(run_dir), 4, seed=0)
        assert images.dim() == 4 and len(images) == 4 and how and "\n" not in how
        assert 0 <= float(images.min()) and float(images.max()) <= 1
        again, _ = family.sample_images(config, RunDir(run_dir), 4, seed=0)
        assert torch.equal(images, again)
    if config.guide is not None:
        rows = compare(config, [config.guide.name], tmp_path / "cmp")
        assert len(rows) == 1 and set(family.compare_columns) <= set(rows[0])
        assert (tmp_path / "cmp" / "compare.md").read_text().count("\n|") >= 2


def test_the_toy_family_works_from_the_command_line_and_scores_exactly(tmp_path, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(get_family("toy_gaussian").example))
    code, out = run_cli(["train", config, "--run-dir", tmp_path / "run"])
    assert code == 0, out
    train_x, test_x = (load_dataset("iris", split).x for split in ("train", "test"))
    expected = exact_test_log_likelihood(train_x, test_x)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_log_likelihood"] == pytest.approx(expected, rel=1e-6)
    assert f"test log-likelihood {expected:.4f}" in out
    assert run_cli(["evaluate", tmp_path / "run"])[0] == 0
    code, out = run_cli(["sample", tmp_path / "run", "--num", "50"])
    assert code == 0 and (tmp_path / "run" / "samples.png").exists() and (tmp_path / "run" / "samples.npy").exists()
    code, out = run_cli(["compare", "--config", config, "--guides", "mle,prior", "--out", tmp_path / "cmp"])
    assert code == 0, out
    table = (tmp_path / "cmp" / "compare.csv").read_text()
    assert "mle" in table and "prior" in table
    message = fails(["analyze", tmp_path / "run"], capsys)
    assert "'analyze' is not available for model.kind: toy_gaussian" in message


def test_an_unknown_kind_names_the_registered_families():
    with pytest.raises(Exception) as info:
        from_dict({"model": {"kind": "toy_gausian"}})
    assert "did you mean 'toy_gaussian'" in str(info.value) and "'vae'" in str(info.value)


def test_a_family_without_a_section_refuses_it_by_name():
    with pytest.raises(Exception, match="config section 'guide' does not apply to model.kind: gan"):
        from_dict({"model": {"kind": "gan"}, "guide": {"name": "normal"}})


def test_the_scores_record_reads_like_the_dict_it_writes():
    scores = get_family("vae").scores(test_nll=90.0, nll_samples=10, khat_share_above=0.25)
    assert scores["test_nll"] == 90.0 and scores["khat_share_above_0.7"] == 0.25
    assert "likelihood" not in scores.to_json()  # a group that does not apply is left out
    assert torch.tensor(1.0).item() == 1.0
