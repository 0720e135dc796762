"""Offline quality check of the clipcap stage: does a model trained on ThinGPT-format data beat a constant caption?

ThinGPT's data is one pooled image embedding per image plus its report. Without CLIP offline, this
writes the same pickle from synthetic slides (``data_tools.synth``): each slide's embedding is the
pooled feature of the offline DINOv2 preset tower (``thinchat.eval.feature_probe.mean_features``: the
mean over the PPL and XPL views and their patch tokens, hidden layer ``--layer`` at ``--image-size``
px; 384 wide), its caption the English report. Then, as a user would:

1. ``import_clipcap(pickle, --split train,test)``  (the restricted unpickler, the split by image);
2. ``thinchat train`` with ``configs/clipcap_prefix.yaml`` (prefix + LoRA on the offline SmolLM2 base)
   for ``--max-steps`` steps, timed in wall-clock and CPU seconds (run it with ``OMP_NUM_THREADS=1``
   so the two agree and the budget is CPU time);
3. greedy answers for the held-out part from its stored embeddings, loaded and generated as ``thinchat
   eval`` does (``load_pretrained`` + ``generate_for_samples``), scored with its metrics;
4. the constant-caption baselines: among ``--candidates`` training reports, the one with the highest
   corpus BLEU-4 against all other training reports, and the one with the highest term F1 against
   them; each is repeated for every held-out slide and scored like the model.

Prints one JSON object (the figures in docs/training.md come from it). Phases reuse what ``--work``
already holds, so a rerun after an interruption continues.

    OMP_NUM_THREADS=1 python bench/studies/clipcap_quality.py --work /tmp/clipcap_bench [--slides 400]
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _util import default_model_dir, machine
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_pickle(work: Path, slides: int, image_size: int, layer: int, seed: int) -> Path:
    """Synthetic slides -> ``[caption_list, image_id2embed]`` as ThinGPT's process_flickr.py writes it."""

    from data_tools.synth import generate
    from thinchat.eval.feature_probe import mean_features
    from thinchat.model.resolve import load_vision_tower

    pkl = work / "thingpt_features.pkl"
    if pkl.is_file():
        return pkl
    synth = work / "synth"
    if not (synth / "captions_en.tsv").is_file():
        generate(synth, slides, seed=seed, lang="en", size=224, workers=1)
    rows = [
        line.split("\t", 1) for line in (synth / "captions_en.tsv").read_text(encoding="utf-8").splitlines()
    ]
    ids = [image_id for image_id, _ in rows]
    tower, processor = load_vision_tower("dinov2-small", image_size=image_size)
    views = [[synth / "images" / f"{i}_ppl.png", synth / "images" / f"{i}_xpl.png"] for i in ids]
    features = mean_features(tower.eval(), processor, views, [layer], drop_cls=True)[layer]
    embeds = {image_id: features[k : k + 1].clone() for k, image_id in enumerate(ids)}  # (1, 384) each
    with pkl.open("wb") as handle:
        pickle.dump([[(i, c.strip()) for i, c in rows], embeds], handle)
    return pkl


def constant_baselines(train_json: Path, candidates: int, seed: int) -> dict[str, str]:
    """The training reports closest to all other training reports, by corpus BLEU-4 and by term F1."""
    import contextlib
    import io

    from pycocoevalcap.bleu.bleu import Bleu

    from thinchat.eval.domain import domain_scores
    from thinchat.eval.tokenize import tokens_str

    reports = [e["conversations"][1]["value"] for e in json.loads(train_json.read_text(encoding="utf-8"))]
    tokens = [tokens_str(r) for r in reports]
    pool = random.Random(seed).sample(range(len(reports)), min(candidates, len(reports)))
    best = {"bleu4": (-1.0, ""), "term_f1": (-1.0, "")}
    for k in tqdm(pool, desc="constant baselines", unit="candidate"):
        others = [i for i in range(len(reports)) if i != k]
        with contextlib.redirect_stdout(io.StringIO()):
            bleu, _ = Bleu(4).compute_score(
                {i: [tokens[i]] for i in others}, {i: [tokens[k]] for i in others}, verbose=0
            )
        f1 = domain_scores({i: reports[k] for i in others}, {i: [reports[i]] for i in others})["micro"]["f1"]
        best["bleu4"] = max(best["bleu4"], (float(bleu[3]), reports[k]))
        best["term_f1"] = max(best["term_f1"], (f1, reports[k]))
    return {name: text for name, (_, text) in best.items()}


def score(answers: dict[str, str], test_json: Path) -> dict[str, float]:
    from thinchat.clipcap.evaldata import load_clipcap_eval_set
    from thinchat.eval.domain import domain_scores
    from thinchat.eval.metrics import score_corpus

    samples, _ = load_clipcap_eval_set(test_json)
    refs = {s.id: s.references for s in samples}
    hyps = {s.id: answers[s.id] for s in samples}
    scores = score_corpus(hyps, refs, "en")["scores"]
    return {
        "BLEU-4": round(scores["BLEU-4"], 2),
        "CIDEr-D": round(scores["CIDEr-D"], 2),
        "term_f1": round(domain_scores(hyps, refs)["micro"]["f1"] / 100, 3),  # 0-1, as the README quotes it
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="working directory (phases are reused)")
    parser.add_argument("--slides", type=int, default=400)
    parser.add_argument("--test-share", type=float, default=0.15)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate")
    parser.add_argument("--prefix-lr", type=float, default=2e-3, help="prefix MLP learning rate")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--candidates", type=int, default=120, help="training reports tried as the constant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-only", action="store_true", help="stop after training (time it alone)")
    args = parser.parse_args()
    import torch

    from data_tools.clipcap import import_clipcap
    from thinchat.train.config import load_train_config
    from thinchat.train.run import train

    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime()), "args": {
        k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    start = time.perf_counter()
    pkl = write_pickle(args.work, args.slides, args.image_size, args.layer, args.seed)
    data = args.work / "data"
    encoder = f"dinov2-small layer {args.layer} mean of PPL+XPL tokens at {args.image_size} px (bench)"
    summary = import_clipcap(
        pkl, data, split=f"{1 - args.test_share},{args.test_share}", seed=args.seed, encoder=encoder
    )
    result["data"] = {"pickle_bytes": pkl.stat().st_size, "width": summary["embedding_width"],
                      **{p: v["entries"] for p, v in summary["outputs"].items()}}  # fmt: skip
    result["prepare_s"] = round(time.perf_counter() - start, 1)

    base = default_model_dir("dinov2-small", "smollm2-135m-instruct", 112)
    run_dir = args.work / "run"
    overrides = [f"model={base}", f"data={data / 'train'}", f"val_data={data / 'test'}", f"output_dir={run_dir}",
                 f"max_steps={args.max_steps}", f"per_device_train_batch_size={args.batch_size}",
                 f"learning_rate={args.lr}", f"projector_lr={args.prefix_lr}", "lora_dropout=0",
                 f"save_steps={max(1, args.max_steps // 2)}", f"eval_steps={args.max_steps}",
                 f"seed={args.seed}"]  # fmt: skip
    config = load_train_config(str(REPO / "configs" / "clipcap_prefix.yaml"), overrides)
    if not (run_dir / "clipcap_prefix.json").is_file():
        wall, cpu = time.perf_counter(), cpu_seconds()
        train(config, resume="auto")
        result["train"] = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(cpu_seconds() - cpu, 1),
                           "threads": torch.get_num_threads(), "steps": args.max_steps,
                           "samples_seen": args.max_steps * args.batch_size}  # fmt: skip
        (args.work / "train_time.json").write_text(json.dumps(result["train"]), encoding="utf-8")
    else:
        result["train"] = json.loads((args.work / "train_time.json").read_text(encoding="utf-8"))
    history = json.loads((run_dir / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    result["held_out_log"] = [r for r in history if "eval_loss" in r or "sample" in r]
    if args.train_only:
        print(json.dumps(result, indent=1, ensure_ascii=False))
        return 0

    from thinchat.clipcap.evaldata import load_clipcap_eval_set
    from thinchat.engine import ChatEngine
    from thinchat.eval.runner import generate_for_samples
    from thinchat.model.loading import load_pretrained

    test_json = data / "test" / "conversations.json"
    samples, _ = load_clipcap_eval_set(test_json)
    wall = time.perf_counter()
    model, processor = load_pretrained(run_dir, merge=True)  # what `thinchat eval` loads and runs
    engine = ChatEngine(model, processor, reuse_prefix=False)
    answers = generate_for_samples(engine, samples, 16, args.max_new_tokens, desc="eval clipcap")
    result["eval_wall_s"] = round(time.perf_counter() - wall, 1)
    rows = [{"id": s.id, "answer": answers[s.id], "reference": s.references[0]} for s in samples]
    (args.work / "generations.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    result["model"] = score(answers, data / "test" / "conversations.json")
    result["n_test"] = len(samples)
    constants = constant_baselines(data / "train" / "conversations.json", args.candidates, args.seed)
    result["baselines"] = {}
    for name, text in constants.items():
        result["baselines"][f"constant_by_{name}"] = {
            **score({i: text for i in answers}, data / "test" / "conversations.json"),
            "text": text,
        }
    best = {m: max(b[m] for b in result["baselines"].values()) for m in ("BLEU-4", "term_f1")}
    result["beats_constant"] = {m: result["model"][m] > best[m] for m in best}
    result["examples"] = rows[:2]
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
