"""Writes the hand-made results tree under tests/golden/records/ that the golden table tests read.

Run it only to change the fixture on purpose (`python tests/golden/make_records.py`), then regenerate the expected
outputs with `UPDATE_GOLDEN=1 pytest tests/test_tables.py` and review the diff. Scores are deterministic pseudo-random
numbers; every record has the keys a real `record.json` has (see results/README.md).

What the tree holds (profile `tiny`, suite `tiny`, concepts dog (5 real images) and teapot (3), seeds 0 and 1):
- custom_diffusion/default: all 4 runs;  custom_diffusion/sd21: teapot seed 1 failed (diverged);
- custom_diffusion/default+iterations=500: seed 0 only (an ad-hoc override);
- echodistill/default: teapot seed 1 missing; views teacher, student_before_echo, teacher_before_echo;
- echodistill/drop_teacher: seed 0 only;  drop_disc_clip+disc_dino1: dog seed 0 only (a row no table lists);
- echodistill/nfe2, backbone_hyper-sd15, teacher_first (no views), shots1: all 4 runs;
- profile `paper`, suite `paper`: echodistill/default dog seed 0 (a second group).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

ROOT = Path(__file__).parent / "records"
N_REAL = {"dog": 5, "teapot": 3}
PROMPTS = {"dog": ["a {} in the jungle", "a {} in the snow"],
           "teapot": ["a {} on the beach", "a {} on a cobblestone street"]}
NOUN = {"dog": "dog", "teapot": "teapot"}
EVAL_SEEDS = (0, 1)
_SUITE = {"clip_pretrained": None, "clip_quick_gelu": False, "dino_crop": None, "dino_weights": None,
          "dino_embedding": "CLS token after the final norm (timm num_classes=0 forward)", "dino_kwargs": {},
          "open_clip_torch_version": "2.26.1", "timm_version": "1.0.9", "torch_version": "2.4.0"}
SUITES = {"tiny": {**_SUITE, "name": "tiny", "builder": "tiny", "clip_arch": "bench-tiny-clip",
                   "dino_arch": "vit_tiny_patch16_224", "dino_resize": 32, "image_size": 64},
          "paper": {**_SUITE, "name": "paper", "builder": None, "clip_arch": "ViT-L-14-336",
                    "clip_pretrained": "openai",
                    "dino_arch": "vit_large_patch14_dinov2", "dino_resize": 224, "image_size": 512}}
ALL = {(c, s): "done" for c in N_REAL for s in (0, 1)}


def scores(key: str, level: float, n_real: int) -> dict:
    rng = random.Random(key)
    return {"clip_t": round(0.2 + 0.1 * level * rng.random(), 4), "clip_i": round(0.5 + 0.3 * level * rng.random(), 4),
            "dino": round(0.2 + 0.5 * level * rng.random(), 4), "n_real": n_real}


def evaluation(tag: str, concept: str, identifier: str, level: float, steps: int, folder: str) -> dict:
    rows = []
    for i, template in enumerate(PROMPTS[concept]):
        for s in EVAL_SEEDS:
            rows.append({"file": f"{folder}/p{i:02d}_s{s}.png", "prompt_index": i, "eval_seed": s,
                         "prompt": template.format(f"{identifier} {NOUN[concept]}"),
                         **scores(f"{tag}/{i}/{s}", level, N_REAL[concept])})
    per_seed = {}
    for s in EVAL_SEEDS:
        sub = [r for r in rows if r["eval_seed"] == s]
        n = sum(r["n_real"] for r in sub)
        per_seed[s] = {"clip_t": sum(r["clip_t"] for r in sub) / len(sub),
                       "clip_i": sum(r["clip_i"] * r["n_real"] for r in sub) / n,
                       "dino": sum(r["dino"] * r["n_real"] for r in sub) / n}
    metrics = {k: sum(p[k] for p in per_seed.values()) / len(per_seed) for k in ("clip_t", "clip_i", "dino")}
    n = N_REAL[concept]
    return {"steps": steps, "metrics": metrics,
            "real_vs_real": {"clip_i": 0.9 + 0.01 * n, "dino": 0.7 + 0.02 * n, "n": n, "n_pairs": n * (n - 1)},
            "images": rows, "timing": {"infer_s_per_image": 0.1 * steps, "infer_s_per_image_batched": 0.05 * steps,
                                       "eval_batch_size": 25}}


def record(method: str, variant: str, profile: str, concept: str, seed: int, status: str, level: float,
           backbone: str = "sd-turbo", views: tuple = (), config: dict | None = None, steps: int = 1) -> dict:
    identifier = "<new1>"
    config = {"iterations": 40, **(config or {})}
    rec = {"schema": 1, "status": status, "method": method, "variant": variant, "concept": concept, "seed": seed,
           "profile": profile, "backbone": backbone, "method_version": 1, "config": config,
           "config_hash": f"{random.Random(f'{method}/{variant}/{concept}/{seed}').getrandbits(64):016x}",
           "overrides": {"iterations": 500} if "+iterations=500" in variant else {},
           "models": {"profile": profile, "backbone": backbone, "resolution": 512 if profile == "paper" else 64,
                      "random_init": False, "iteration_cap": None if profile == "paper" else 40, "components": {}},
           "metric_suite": SUITES["paper" if profile == "paper" else "tiny"],
           "versions": {"torch": "2.4.0", "diffusers": "0.30.0"}, "git_commit": "0" * 40,
           "started_at": "2025-01-01T00:00:00+0000", "host": "golden", "finished_at": "2025-01-01T00:01:00+0000"}
    if status == "failed":
        rec.update(reason="Diverged: non-finite loss_teacher at iteration 12 (phase train)", diverged=True,
                   traceback="traceback.txt")
        return rec
    tag = f"{profile}/{method}/{variant}/{concept}/{seed}"
    ev = evaluation(tag, concept, identifier, level, steps, "images")
    timing = ev.pop("timing")
    if config.get("teacher_first"):  # the teacher alone, then the student: two phases of `iterations`
        iterations = 2 * config["iterations"]
    else:  # the distillation stage, plus 10 echo iterations for EchoDistill
        iterations = config["iterations"] + (10 if method == "echodistill" else 0)
    rec.update(ev, identifier=identifier, loss_log="loss_log.jsonl", device="cpu (golden)",
               views={v: evaluation(f"{tag}/{v}", concept, identifier, lvl, st, v) for v, lvl, st in views},
               timing={"train_s": 30.0 + 10 * seed + (5 if concept == "teapot" else 0), "load_s": 2.0,
                       "iterations": iterations, "it_per_s": iterations / 30.0,
                       "peak_memory": {"bytes": 1 << 30, "kind": "process_max_rss"}, **timing})
    return rec


ECHO_VIEWS = (("teacher", 0.9, 25), ("student_before_echo", 0.8, 1), ("teacher_before_echo", 0.85, 25))


def runs() -> list[dict]:
    out = []

    def add(method, variant, which, level, profile="tiny", **kw):
        for (c, s), status in which.items():
            out.append(record(method, variant, profile, c, s, status, level, **kw))

    add("custom_diffusion", "default", ALL, 0.3, config={"timestep_policy": "t999", "sample_steps": 1})
    add("custom_diffusion", "sd21", {**ALL, ("teapot", 1): "failed"}, 0.7,
        config={"base": "teacher", "timestep_policy": "uniform", "sample_steps": 25}, steps=25)
    add("custom_diffusion", "default+iterations=500", {("dog", 0): "done", ("teapot", 0): "done"}, 0.4,
        config={"iterations": 500})
    ed = {k: v for k, v in ALL.items() if k != ("teapot", 1)}
    add("echodistill", "default", ed, 1.0, views=ECHO_VIEWS)
    add("echodistill", "drop_teacher", {("dog", 0): "done", ("teapot", 0): "done"}, 0.8,
        views=(("student_before_echo", 0.75, 1),), config={"drop": ["teacher"]})
    add("echodistill", "drop_disc_clip+disc_dino1", {("dog", 0): "done"}, 0.6,
        views=ECHO_VIEWS, config={"drop": ["disc_clip", "disc_dino1"]})
    add("echodistill", "nfe2", ALL, 0.95, views=(("student_before_echo", 0.9, 2),), config={"eval_steps": 2}, steps=2)
    add("echodistill", "backbone_hyper-sd15", ALL, 0.7, backbone="hyper-sd15", views=ECHO_VIEWS)
    add("echodistill", "teacher_first", ALL, 0.85, config={"teacher_first": True})
    add("echodistill", "shots1", ALL, 0.75, views=ECHO_VIEWS, config={"shots": 1})
    add("echodistill", "default", {("dog", 0): "done"}, 1.0, profile="paper", views=ECHO_VIEWS)
    return out


def loss_log(rec: dict) -> str:
    rng = random.Random(rec["config_hash"])
    lines = []
    n = rec["config"]["iterations"]
    phases = [("teacher", n), ("distill", n)] if rec["config"].get("teacher_first") else [("distill", n), ("echo", 10)]
    for phase, count in phases:
        for i in range(count):
            decay = 1.0 / (1 + 0.1 * i)
            lines.append(json.dumps({"phase": phase, "iteration": i,
                                     "loss_teacher": round(0.5 * decay + 0.1 * rng.random(), 4),
                                     "loss_student": round(2.0 * decay + 0.2 * rng.random(), 4),
                                     "mse": round(decay, 4), "id": round(0.1 * decay, 4),
                                     "disc_clip": round(0.69 - 0.1 * rng.random(), 4)}))
    return "\n".join(lines) + "\n"


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    for rec in runs():
        d = ROOT / rec["profile"] / rec["method"] / rec["variant"] / rec["concept"] / f"seed{rec['seed']}"
        d.mkdir(parents=True)
        (d / "record.json").write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        if rec["method"] == "echodistill" and rec["status"] == "done":
            (d / "loss_log.jsonl").write_text(loss_log(rec))
    print(f"wrote {len(runs())} records under {ROOT}")


if __name__ == "__main__":
    main()
