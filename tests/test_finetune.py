"""`thinchat finetune` end to end on a tiny random model: captions + images + test ids -> model -> report,
a resumed re-run that reuses every step, a saved DatasetDict as input, and bad input refused before any
model loads."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
import torch

from thinchat.cli import main

CAPTIONS = [
    "Quartz grains are subrounded with undulose extinction. Calcite cement fills pores.",
    "Plagioclase shows polysynthetic twinning; K-feldspar is partly argillized.",
    "The argillaceous matrix is sericitized. Quartz and zircon are present.",
    "Calcite cement is ferroan; feldspar grains are altered to clay.",
]
#: Keep each stage to a step or two and the report to a few short answers.
TINY = [
    "image_size=28",
    "feature_layer=1",
    "text_only_ratio=0",
    "eval_limit=3",
    "eval_batch_size=3",
    "max_new_tokens=4",
    "question_probes=1",
    "reliance_samples=2",
    "qa_turns=2",
    "train_overrides=['max_steps=2', 'bf16=false', 'save_steps=1000', 'eval_steps=1000', 'logging_steps=1', "
    "'report_to=[]', 'per_device_train_batch_size=2', 'per_device_eval_batch_size=2']",
]


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> tuple[str, str]:
    """A saved tiny DINOv2 tower and a tiny Llama-family LM (thinchat build's inputs)."""
    from thinchat.testing import tiny_lm, tiny_tokenizer, tiny_tower

    root = tmp_path_factory.mktemp("parts")
    tokenizer = tiny_tokenizer("llama")
    lm = tiny_lm("llama", len(tokenizer))
    lm.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    tower, processor = tiny_tower("dinov2")
    tower.save_pretrained(root / "tower")
    processor.save_pretrained(root / "tower")
    return str(root / "tower"), str(root / "lm")


def _slides(root: Path, n: int = 16, captions: list[str] = CAPTIONS) -> tuple[Path, Path]:
    from thinchat.testing import tiny_image

    images = root / "slides"
    images.mkdir(parents=True)
    lines = []
    for i in range(n):
        tiny_image(seed=i).save(images / f"s{i:02d}.png")
        lines.append(f"s{i:02d}\t{captions[i % len(captions)]}")
    captions = root / "captions.tsv"
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return captions, images


def test_finetune_end_to_end_then_reuses_every_step(parts, tmp_path, capsys):
    tower, lm = parts
    captions, images = _slides(tmp_path)
    ids = tmp_path / "test_ids.txt"
    ids.write_text("s01\ns05\ns09\n", encoding="utf-8")
    out = tmp_path / "mine"
    argv = [
        "finetune", "--captions", str(captions), "--images", str(images), "--test-ids", str(ids),
        "--out", str(out), "--vision", tower, "--llm", lm, "--lang", "en", "--hardware", "cpu",
        "--threads", "1", *TINY,
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"python cli_demo.py --from_pretrained {out / 'lora'}" in printed
    assert f"python web_demo.py --from_pretrained {out / 'lora'}" in printed
    test = json.loads((out / "data" / "conversations_test.json").read_text(encoding="utf-8"))
    assert {e["id"] for e in test} == {"s01", "s05", "s09"}
    train = json.loads((out / "data" / "conversations_train.json").read_text(encoding="utf-8"))
    assert not {e["id"] for e in train} & {"s01", "s05", "s09"}
    report = json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))
    assert set(report["checkpoints"]) == {"base", "finetuned"} and report["counts"]["scored"] == 3
    assert set(report["answer_diversity"]) == {"base", "finetuned"}
    assert (out / "lora" / "adapter_config.json").is_file()
    state = json.loads((out / "finetune_state.json").read_text())
    assert {"convert", "build", "tower", "stage 1 (projector)", "stage 2 (lora)", "evaluate"} <= set(state)
    # tower_config: auto adapts the tower on the lexicon terms the captions name (quartz, calcite...).
    adapted = json.loads((out / "tower" / "tower_adaptation.json").read_text())["terms"]
    assert {"quartz", "calcite"} <= set(adapted)

    stamp = (out / "report" / "report.json").stat().st_mtime_ns
    assert main(argv) == 0  # nothing changed: every step is reused
    assert (out / "report" / "report.json").stat().st_mtime_ns == stamp


def test_stage0_is_skipped_with_a_warning_where_no_caption_names_a_term(parts, tmp_path, caplog):
    """Stage 0 learns the lexicon terms the descriptions name; captions naming none leave it nothing to
    learn, so the recipe says so and goes on from the tower as built instead of failing."""
    tower, lm = parts
    captions, images = _slides(tmp_path, captions=["A dim slide.", "A bright slide.", "Grey and blurred."])
    out = tmp_path / "plain"  # tower_config: auto, as a user runs it
    argv = [
        "finetune", "--captions", str(captions), "--images", str(images), "--out", str(out), "--vision",
        tower, "--llm", lm, "--lang", "en", "--hardware", "cpu", "--threads", "1", *TINY,
    ]  # fmt: skip
    caplog.set_level(logging.WARNING, logger="thinchat.recipes.recipe")
    assert main(argv) == 0
    assert any("stage 0 (tower) skipped: no lexicon term" in r.getMessage() for r in caplog.records)
    assert not (out / "tower").exists() and (out / "lora" / "adapter_config.json").is_file()


def test_finetune_reads_a_saved_datasetdict(parts, tmp_path, capsys):
    tower, lm = parts
    captions, images = _slides(tmp_path)
    hf_dir = tmp_path / "hf"
    ids = tmp_path / "test_ids.txt"
    ids.write_text("s02\ns03\n", encoding="utf-8")
    assert main([
        "data", "convert", "--captions", str(captions), "--images", str(images), "--out", str(hf_dir),
        "--format-out", "hf", "--test-ids", str(ids), "--split", "0.8,0.2",
    ]) == 0  # fmt: skip
    import datasets

    saved = datasets.load_from_disk(str(hf_dir))
    assert set(saved) == {"train", "val", "test"}
    assert sorted(saved["test"]["id"]) == ["s02", "s03"]
    assert isinstance(saved["test"].features["image"].feature, datasets.Image)
    assert saved["test"][0]["image"][0].size == (32, 32)

    out = tmp_path / "from_hf"
    argv = [
        "finetune", "--dataset", str(hf_dir), "--out", str(out), "--vision", tower, "--llm", lm,
        "--lang", "en", "--hardware", "cpu", "--threads", "1", *TINY,
    ]  # fmt: skip
    assert main(argv) == 0
    test = json.loads((out / "data" / "conversations_test.json").read_text(encoding="utf-8"))
    assert sorted(e["id"] for e in test) == ["s02", "s03"]
    assert (out / "report" / "report.md").is_file()


def _labelled(root: Path, per_class: int = 6) -> tuple[Path, Path]:
    """A labels file sorted by class (id,class,ppl,xpl) over two views per slide in ppl/ and xpl/."""
    from thinchat.testing import tiny_image

    rows, seed = ["id,class,ppl,xpl"], 0
    for cls in ("feldspar", "lithic", "quartz"):
        for k in range(per_class):
            ident = f"{cls}{k}"
            for view in ("ppl", "xpl"):
                (root / view).mkdir(parents=True, exist_ok=True)
                seed += 1
                tiny_image(seed=seed).save(root / view / f"{ident}.png")
            rows.append(f"{ident},{cls},ppl/{ident}.png,xpl/{ident}.png")
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "labels.csv", root


def test_finetune_on_labels_reports_every_class_beside_the_probe(parts, tmp_path, capsys):
    tower, lm = parts
    labels, images = _labelled(tmp_path / "grains", per_class=8)
    out = tmp_path / "mine"
    argv = [
        "finetune", "--labels", str(labels), "--images", str(images), "--out", str(out), "--vision", tower,
        "--llm", lm, "--hardware", "cpu", "--threads", "1", *TINY,
    ]  # fmt: skip
    assert main(argv) == 0
    # Stage 0 (tower_config: auto, for labelled images) adapted the tower on the classes; stage 1 started from it.
    from safetensors.torch import load_file

    assert json.loads((out / "tower" / "tower_adaptation.json").read_text())["terms"] == [
        "feldspar", "quartz", "rock_fragment",
    ]  # fmt: skip
    weights = {name: load_file(out / name / "model.safetensors") for name in ("base", "tower", "projector")}
    tower_keys = [k for k in weights["base"] if "vision_tower" in k and "weight" in k]
    assert any(not torch.equal(weights["base"][k], weights["tower"][k]) for k in tower_keys)
    assert all(torch.equal(weights["tower"][k], weights["projector"][k]) for k in tower_keys)
    assert (out / "tower" / "vision_tower" / "config.json").is_file()  # the adapted tower on its own
    test = json.loads((out / "data" / "conversations_test.json").read_text(encoding="utf-8"))
    per_class = Counter(e["labels"][0] for e in test)  # a fifth of 24 slides, drawn within each class
    assert sum(per_class.values()) == 5 and set(per_class) == {"feldspar", "lithic", "quartz"}
    assert {e["id"] for e in test} <= {f"{c}{k}" for c in ("feldspar", "lithic", "quartz") for k in range(8)}
    report = json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))
    classes = report["classes"]
    assert classes["classes"] == ["feldspar", "lithic", "quartz"] and set(classes["models"]) == {
        "base",
        "finetuned",
    }
    assert 0.0 <= classes["probe"]["class_accuracy"] <= 1.0 and classes["probe"]["n_test"] == 5
    assert classes["probe"]["detail"].startswith(str(out / "tower" / "vision_tower"))  # the tower it reads
    text = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert (
        "| linear probe on the tower's features (ceiling) |" in text
        and "Confusion matrix, `finetuned`" in text
    )
    assert (out / "report" / "confusion.png").is_file()
    assert "## Classes" in capsys.readouterr().out


def test_train_and_eval_data_can_be_a_saved_split(tmp_path):
    from thinchat.eval.data import load_eval_set
    from thinchat.train.sources import open_samples

    captions, images = _slides(tmp_path, n=6)
    hf_dir = tmp_path / "hf"
    assert main([
        "data", "convert", "--captions", str(captions), "--images", str(images), "--out", str(hf_dir),
        "--format-out", "hf", "--split", "0.5,0.5",
    ]) == 0  # fmt: skip
    samples = list(open_samples(hf_dir / "train"))
    assert len(samples) == 3 and all(s.images[0].is_file() for s in samples)
    kept, skipped = load_eval_set(hf_dir / "val")
    assert len(kept) == 3 and not skipped


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--test-ids", "IDS:nope\n"], "match no slide"),
        (["--dataset", "somewhere"], "both captions"),
        (["--labels", "labels.csv"], "both captions"),
        (["--config", "CONFIG:lora_r: 8\nlearning_rate: 0.1\n"], "training-stage keys"),
        (["lora_config=configs/demo_cpu_projector.yaml"], "this step needs stage lora"),
    ],
)
def test_bad_input_is_refused_before_any_model_loads(tmp_path, capsys, monkeypatch, extra, message):
    import thinchat.recipes.finetune

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(thinchat.recipes.finetune, "run_recipe", no_models)
    captions, images = _slides(tmp_path, n=4)
    resolved = []
    for item in extra:
        if item.startswith(("IDS:", "CONFIG:")):
            kind, text = item.split(":", 1)
            path = tmp_path / ("ids.txt" if kind == "IDS" else "recipe.yaml")
            path.write_text(text, encoding="utf-8")
            item = str(path)
        resolved.append(item)
    argv = ["finetune", "--captions", str(captions), "--images", str(images), "--out", str(tmp_path / "o")]
    assert main([*argv, "--hardware", "cpu", *resolved]) == 2
    assert message in capsys.readouterr().err


def test_a_test_slide_sharing_an_image_with_training_is_refused(tmp_path):
    from data_tools.convert import convert
    from thinchat.errors import DataFormatError
    from thinchat.testing import tiny_image

    for name in ("x", "y", "z"):
        tiny_image(seed=ord(name)).save(tmp_path / f"{name}.png")
    rows = [{"image": ["x.png", "y.png"], "caption": "Quartz."}, {"image": ["y.png"], "caption": "Calcite."}]
    rows.append({"image": ["z.png"], "caption": "Feldspar."})
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="shares the image"):
        convert(jsonl, tmp_path, tmp_path / "out.json", test_ids=["y"])
    with pytest.raises(DataFormatError, match="one split"):
        convert(jsonl, tmp_path, tmp_path / "out.json", test_ids=["y"], val_ids=["y"])


def test_config_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    from thinchat.config import read_yaml

    recipe = tmp_path / "recipes" / "mine.yaml"
    recipe.parent.mkdir()
    (recipe.parent / "captions.tsv").write_text("a\tQuartz.\n", encoding="utf-8")
    (tmp_path / "here.txt").write_text("x", encoding="utf-8")
    recipe.write_text("captions: captions.tsv\nimages: slides/\nout: here.txt\nsplit: 0.8,0.1,0.1\n")
    monkeypatch.chdir(tmp_path)
    data = read_yaml(recipe, ["test_ids=ids.txt"])
    assert data["captions"] == str(recipe.parent / "captions.tsv")  # found beside the config
    assert data["images"] == "slides/"  # exists nowhere: kept as written (relative to the working dir)
    assert data["out"] == "here.txt"  # exists relative to the working dir: kept
    assert data["test_ids"] == "ids.txt"  # an override: relative to the working dir


def test_gpu_recipe_is_the_llava_configs_in_bf16_on_one_device():
    from thinchat.recipes.finetune import FinetuneConfig, resolve
    from thinchat.train.config import load_train_config

    config, overrides = resolve(FinetuneConfig(captions="c.tsv", images=".", hardware="gpu"))
    assert (config.projector_config, config.lora_config) == (
        "configs/pretrain_projector.yaml",
        "configs/finetune_lora.yaml",
    )
    stage2 = load_train_config(config.lora_config, list(overrides))
    assert stage2.bf16 is True and stage2.deepspeed is None and stage2.cpu is False
    assert stage2.per_device_train_batch_size * stage2.gradient_accumulation_steps > 2  # the CPU recipe's


def test_caption_ids_are_the_ids_convert_gives(tmp_path):
    from data_tools.convert import convert
    from thinchat.eval.caption import discover_slides
    from thinchat.testing import tiny_image

    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("a.png", "b.jpg", "c_ppl.png", "c_xpl.png"):
        tiny_image(seed=len(name)).save(folder / name)
    for fmt, text in (("tsv", "a\tQuartz.\nb\tCalcite.\nc\tFeldspar.\n"),
                      ("jsonl", '{"image": "a.png", "caption": "Quartz."}\n{"image": "b.jpg", "caption": "Mica."}\n'
                                '{"image": ["c_ppl.png", "c_xpl.png"], "caption": "Feldspar."}\n')):  # fmt: skip
        captions = tmp_path / f"c.{fmt}"
        captions.write_text(text, encoding="utf-8")
        convert(captions, folder, tmp_path / f"{fmt}.json")
        entries = json.loads((tmp_path / f"{fmt}.json").read_text(encoding="utf-8"))
        converted = {e["id"] for e in entries}
        assert {s.id for s in discover_slides([folder], ("_ppl", "_xpl"))} == {"a", "b", "c"}
        assert converted == {"a", "b", "c"}  # a JSONL pair is named by its common stem too


def test_an_imagefolder_with_metadata_exports_to_captions_and_fixed_splits(tmp_path):
    from thinchat.hfdata import export_dataset
    from thinchat.testing import tiny_image

    for split, names in (("train", ["a", "b", "c"]), ("test", ["d"])):
        folder = tmp_path / "set" / split
        folder.mkdir(parents=True)
        rows = ["file_name,text"]
        for name in names:
            tiny_image(seed=ord(name)).save(folder / f"{name}.png")
            rows.append(f"{name}.png,Quartz grain {name}.")
        (folder / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    plan = export_dataset(tmp_path / "set", tmp_path / "out")
    assert plan["rows"] == 4 and plan["test_ids"] == ["test_0"] and plan["val_ids"] == []
    lines = Path(plan["captions"]).read_text(encoding="utf-8").splitlines()
    assert {json.loads(line)["caption"] for line in lines} == {f"Quartz grain {n}." for n in "abcd"}
    assert all((Path(plan["images"]) / json.loads(line)["image"][0]).is_file() for line in lines)


def test_convert_fixed_test_and_val_ids_from_the_cli(tmp_path):
    captions, images = _slides(tmp_path, n=10)
    (tmp_path / "test.txt").write_text("# held out\ns00\ns01\n", encoding="utf-8")
    (tmp_path / "val.txt").write_text("s02\n", encoding="utf-8")
    out = tmp_path / "conv.json"
    argv = ["data", "convert", "--captions", str(captions), "--images", str(images), "--out", str(out),
            "--test-ids", str(tmp_path / "test.txt"), "--val-ids", str(tmp_path / "val.txt")]  # fmt: skip
    assert main(argv) == 0
    ids = {
        name: sorted(
            e["id"] for e in json.loads((tmp_path / f"conv_{name}.json").read_text(encoding="utf-8"))
        )
        for name in ("train", "val", "test")
    }
    assert ids["test"] == ["s00", "s01"] and ids["val"] == ["s02"] and len(ids["train"]) == 7


def test_exported_dataset_converts_to_its_own_ids(tmp_path):
    """A dataset's rows (two views, ids with dots) keep their ids through export + convert."""
    import datasets

    from data_tools.convert import convert
    from thinchat.hfdata import export_dataset
    from thinchat.testing import tiny_image

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"src{i}.png")
        tiny_image(seed=i).save(paths[-1])
    views = [[str(paths[0]), str(paths[1])], [str(paths[2]), str(paths[3])]]
    columns = {"id": ["s.1", "s.2"], "image": views, "caption": ["Quartz.", "Calcite."]}
    table = datasets.Dataset.from_dict(columns).cast_column("image", datasets.List(datasets.Image()))
    datasets.DatasetDict(train=table).save_to_disk(str(tmp_path / "hf"))
    plan = export_dataset(tmp_path / "hf", tmp_path / "export")
    convert(plan["captions"], plan["images"], tmp_path / "conv.json")
    entries = json.loads((tmp_path / "conv.json").read_text(encoding="utf-8"))
    assert sorted((e["id"], len(e["image"])) for e in entries) == [("s.1", 2), ("s.2", 2)]
