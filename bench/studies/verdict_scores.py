"""Is the yes/no verdict in the image? The first answer token's yes-vs-no score, asked alone.

For every presence question of a report (``questions_finetuned.jsonl`` of ``thinchat eval``), asked
alone after the slide's images as the report asks it, this reads the finetuned model's next-token
logits at the answer's first position: score = logit("Yes") - logit("No") (是/否 for Chinese). It
prints JSON with

- ``auc``: how well the score separates present from absent terms (Mann-Whitney U / (n_yes * n_no));
  0.5 = the verdict does not depend on the slide, 1.0 = a threshold exists that is always right;
- ``balanced_at_zero``: the balanced accuracy of the verdict greedy decoding gives (score > 0);
- ``balanced_calibrated``: contextual calibration (Zhao et al. 2021, "Calibrate before use"): the same
  question asked about a content-free slide (mid-grey views) gives the model's prior for that
  question, and the verdict is score - prior > 0;
- ``balanced_best_threshold``: the best single threshold, chosen on these same questions (an upper
  bound for any recalibration of the first token, not a result).

    python bench/studies/verdict_scores.py --from_pretrained checkpoints/demo/lora \
        --questions checkpoints/demo/report/questions_finetuned.jsonl \
        --test checkpoints/demo/data/conversations_en_test.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _util import emit_report

VERDICT_WORDS = {"en": ("Yes", "No"), "zh": ("是", "否")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from_pretrained", required=True, help="the finetuned checkpoint")
    parser.add_argument("--questions", required=True, help="questions_finetuned.jsonl of its report")
    parser.add_argument("--test", required=True, help="the test conversations JSON (image paths)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def slide_images(test_json: Path) -> dict[str, list[Path]]:
    entries = json.loads(test_json.read_text(encoding="utf-8"))
    return {e["id"]: [test_json.parent / p for p in e["image"]] for e in entries}


def first_token_score(engine, images: list, question: str, ids: tuple[int, int]) -> float:
    """logit(yes word) - logit(no word) at the answer's first position, the question asked alone."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    messages = [
        {
            "role": "user",
            "content": [*({"type": "image"} for _ in images), {"type": "text", "text": question}],
        }
    ]
    encoded = engine._tokenize(engine.render(messages, images))
    features = engine.image_features(images)
    with torch.inference_mode():
        logits = engine.model(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features)},
            logits_to_keep=1,
        ).logits[0, -1]
    return float(logits[ids[0]] - logits[ids[1]])


def auc(scores: list[float], truth: list[bool]) -> float:
    """P(score of a present term > score of an absent one): Mann-Whitney U over the pairs."""
    from scipy.stats import mannwhitneyu

    present = [s for s, t in zip(scores, truth, strict=True) if t]
    absent = [s for s, t in zip(scores, truth, strict=True) if not t]
    return mannwhitneyu(present, absent).statistic / (len(present) * len(absent))


def balanced(scores: list[float], truth: list[bool], threshold: float = 0.0) -> float:
    said = [s > threshold for s in scores]
    yes = [p for p, t in zip(said, truth, strict=True) if t]
    no = [not p for p, t in zip(said, truth, strict=True) if not t]
    return (sum(yes) / len(yes) + sum(no) / len(no)) / 2


def main(argv: list[str] | None = None) -> int:
    from PIL import Image
    from tqdm import tqdm

    from thinchat.engine import ChatEngine
    from thinchat.images import load_image

    args = parse_args(argv)
    engine = ChatEngine.from_pretrained(args.from_pretrained)
    rows = [json.loads(line) for line in Path(args.questions).read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r["type"] == "presence"]
    slides = slide_images(Path(args.test))
    lang = rows[0]["lang"]
    ids = tuple(engine.tokenizer.encode(w, add_special_tokens=False)[0] for w in VERDICT_WORDS[lang])
    scores, priors, truth = [], [], []
    for row in tqdm(rows, desc="verdicts", unit="q"):
        images = [load_image(p) for p in slides[row["id"].split("#")[0]]]
        blank = [Image.new("RGB", image.size, (128, 128, 128)) for image in images]
        scores.append(first_token_score(engine, images, row["question"], ids))
        priors.append(first_token_score(engine, blank, row["question"], ids))
        truth.append(row["expected"] == "yes")
    present = [s for s, t in zip(scores, truth, strict=True) if t]
    absent = [s for s, t in zip(scores, truth, strict=True) if not t]
    calibrated = [s - p for s, p in zip(scores, priors, strict=True)]
    result = {
        "checkpoint": args.from_pretrained,
        "questions": len(rows),
        "present": len(present),
        "auc": round(auc(scores, truth), 3),
        "auc_calibrated": round(auc(calibrated, truth), 3),
        "balanced_at_zero": round(balanced(scores, truth), 3),
        "balanced_calibrated": round(balanced(calibrated, truth), 3),
        "balanced_best_threshold": round(max(balanced(scores, truth, t - 1e-6) for t in scores), 3),
        "mean_score_present": round(sum(present) / len(present), 3),
        "mean_score_absent": round(sum(absent) / len(absent), 3),
        "mean_prior": round(sum(priors) / len(priors), 3),
    }
    emit_report(result, args.out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
