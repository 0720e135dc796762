"""Do answers asked directly follow the model's own reading when trained on it (self-training)?

Asked alone, a yes/no answer is decided at one position; the model's description reads the slide over
many. Context distillation (Snell et al. 2022) trains the direct path on what the looked-first path
says. On training slides the two already agree with the reference (the model learnt them), so the
teacher labels new, unlabelled slides: the finetuned model describes them as it does before a
follow-up (``ChatEngine.look``'s question and greedy decoding), ``thinchat data convert --qa-turns``
turns each own description into grounded question turns, and stage 2 continues on those mixed with the
original training set. The student is scored by ``thinchat eval`` on the run's test slides.

    python bench/studies/self_training.py --run ci-output/demo --out /tmp/st --slides 240 --steps 128

Prints one JSON object (the eval's question-following scores before and after; written to --out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _util import emit_report


def thinchat(*args: str) -> None:
    """Run one thinchat command in its own process (one heavy job at a time)."""
    subprocess.run([sys.executable, "-m", "thinchat", *args], check=True)


def describe_slides(checkpoint: Path, images: Path, ids: list[str], out: Path, batch: int = 40) -> None:
    """The checkpoint's look-first description of each slide, as a captions TSV (id, description)."""
    from thinchat.chat.look import look_messages, look_question
    from thinchat.engine import ChatEngine
    from thinchat.images import load_image

    engine = ChatEngine.from_pretrained(str(checkpoint))
    settings = engine.look_settings()
    question = look_question("")
    rows = []
    for start in tqdm(range(0, len(ids), batch), desc="own descriptions", unit="batch"):
        chunk = ids[start : start + batch]
        views = [[load_image(images / f"{i}_{v}.png") for v in ("ppl", "xpl")] for i in chunk]
        texts = engine.generate_batch(
            [look_messages(question, 2) for _ in chunk],
            views,
            settings.max_new_tokens,
            repetition_penalty=settings.repetition_penalty,
        )
        rows += [f"{i}\t{' '.join(t.split())}" for i, t in zip(chunk, texts, strict=True)]
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")


def scores(report_dir: Path) -> dict:
    report = json.loads((report_dir / "report.json").read_text())
    keys = (
        "yes_no_accuracy",
        "followup_yes_no_accuracy",
        "description_yes_no_accuracy",
        "alone_consistency",
        "followup_consistency",
        "which_accuracy",
        "followup_which_accuracy",
    )
    following = report["question_following"]
    model = "finetuned" if "finetuned" in following else next(iter(following))  # a quickstart's or eval's
    values = {k: following[model]["all"].get(k) for k in keys}
    values["term_f1"] = report["domain"][model]["micro"]["f1"]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a quickstart's out directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--slides", type=int, default=240, help="new unlabelled slides")
    parser.add_argument("--steps", type=int, default=128, help="stage-2 steps of the student")
    parser.add_argument("--original", action="store_true", help="control: continue on the original data only")
    args = parser.parse_args()
    out, run = args.out, args.run
    out.mkdir(parents=True, exist_ok=True)
    train = json.loads((run / "data/conversations_en_train.json").read_text())
    mix = list(train)
    if not args.original:
        thinchat(
            "data",
            "synth",
            "--out",
            str(out / "synth"),
            "--n",
            str(args.slides),
            "--seed",
            "7",
            "--lang",
            "en",
        )
        ids = sorted(p.name[: -len("_ppl.png")] for p in (out / "synth/images").glob("*_ppl.png"))
        describe_slides(run / "lora", out / "synth/images", ids, out / "own.tsv")
        thinchat(
            "data", "convert", "--captions", str(out / "own.tsv"), "--images", str(out / "synth/images"),
            "--out", str(out / "own.json"), "--qa-turns", "6", "--lang", "en", "--seed", "7",
        )  # fmt: skip
        own = json.loads((out / "own.json").read_text())
        for entry in own:  # paths relative to the mix file's folder
            entry["image"] = [str(Path("synth/images") / Path(p).name) for p in entry["image"]]
        mix += own
    for entry in train:
        entry["image"] = [str((run / "data" / p).resolve()) for p in entry["image"]]
    (out / "mix.json").write_text(json.dumps(mix, ensure_ascii=False))
    if not (out / "merged").exists():
        thinchat("export", "--from_pretrained", str(run / "lora"), "--merge", "--out", str(out / "merged"))
    thinchat(
        "train", "--config", "configs/demo_cpu.yaml", f"model={out / 'merged'}", f"data={out / 'mix.json'}",
        f"output_dir={out / 'student'}", f"max_steps={args.steps}", "save_steps=100000", "eval_steps=100000",
    )  # fmt: skip
    test = str(run / "data/conversations_en_test.json")
    for name, ckpt in (("teacher", run / "lora"), ("student", out / "student")):
        if not (out / f"eval_{name}/report.json").exists():
            thinchat("eval", "--from_pretrained", str(ckpt), "--data", test, "--out", str(out / f"eval_{name}"),
                     "--limit", "40", "--reliance-samples", "0", "--look-first")  # fmt: skip
    result = {name: scores(out / f"eval_{name}") for name in ("teacher", "student")}
    result["setting"] = vars(args) | {"run": str(run), "out": str(out)}
    emit_report(result, out / "result.json", indent=2, default=str)


if __name__ == "__main__":
    main()
