"""EchoDistill (arXiv 2510.20512): a multi-step teacher and a one-step student personalised together.

Read top to bottom: set up (models, token, trainable parameters, discriminators, optimisers, data), the
distillation iteration exactly in the order of `shared/spec/method.md` ("One training iteration", steps 1-8),
the echo stage ("Echo stage"), the teacher-first schedule (paper Appendix H), and the method class the harness
calls. Shapes are for paper scale (512 px, latents 4 x 64 x 64, text context 77 x 1024); `tiny` is smaller.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.profiler import record_function

from bench.api import Concept, Diverged, Log, Models, offer_samples
from bench.models import personalize, sampling
from bench.models.checkpoint import Checkpointer
from bench.models.training import Latents, TrainingBatches, load_pixels, templates_for
from echodistill import losses as L
from echodistill.config import ABLATIONS, PERF_OVERRIDES, VARIANTS, EchoDistillConfig
from echodistill.discriminators import build_discriminators, real_features
from echodistill.model import EchoDistillModel, Sampler, Text, autocast, capture, load_model, student_unet

SHORT = {"disc_dino1": "dino1", "disc_dino2": "dino2", "disc_clip": "clip"}
"""Log-name suffix of each discriminator: adv_dino1, disc_dino1, acc_real_dino1, ..."""


def predicted_x0(scheduler: Any, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """x0 from a model prediction at integer timesteps t (B,), for the scheduler's `prediction_type`.

    With alpha_bar = alphas_cumprod[t]: epsilon -> (x_t - sqrt(1 - a) eps) / sqrt(a); v -> sqrt(a) x_t -
    sqrt(1 - a) v (what DDIM's `pred_original_sample` is, without clipping: SD 2.1 has clip_sample off).
    """
    a = scheduler.alphas_cumprod.to(x_t.device)[t].float().view(-1, 1, 1, 1)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x_t - (1 - a).sqrt() * pred) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * pred
    if kind == "sample":
        return pred
    raise ValueError(f"unsupported prediction_type {kind!r}")


class Session:
    """One training run: every model, parameter, optimiser and data stream of EchoDistill for one concept."""

    def __init__(self, config: EchoDistillConfig, concept: Concept, models: Models, seed: int, log: Log,
                 out_dir: Path | None = None) -> None:
        cfg = self.cfg = config
        self.concept, self.models, self.seed, self.log = concept, models, seed, log
        self.out_dir = out_dir  # checkpoints: one folder per stage under it (None: no checkpoints)
        self.device = models.device
        # Seeding (reproducible on CPU): `seed` initialises the heads; one CPU generator draws every random
        # number of the loop (eps, t, t', VAE posterior samples, MS-SWD directions) on any device.
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.use_teacher = cfg.uses("teacher")
        self.losses = ("id_loss",) if cfg.teacher_first else cfg.student_losses()

        # Text: the new token in the teacher's tokenizer/encoder, which the student shares (spec "Models", STE).
        # Without the teacher or without STE, the student has its own encoder copy and its own token.
        self.init_word, self.init_lookup = personalize.init_for(concept.name, concept.class_noun, cfg.init,
                                                                cfg.init_word, concept.dataset)
        word = self.init_word
        self.teacher_text = self._new_token("teacher", word) if self.use_teacher else None
        self.shared = self.use_teacher and cfg.uses("ste")
        self.student_text = self.teacher_text if self.shared else self._new_token("student", word)
        # The student's token learns only through the student's losses when it is its own (no STE, no teacher).
        self.student_learns_token = not self.shared

        # Trainable: cross-attention K/V of both UNets (Custom Diffusion), the token row(s), the heads.
        self.vae = models.vae
        self.encode = Latents(self.vae, cache=models.speed.latents == "cache")  # reused only without augmentation
        self.student_unet, self.student_sched = student_unet(models), models.student_scheduler
        self.student_kv = personalize.cross_attention_kv(self.student_unet, cfg.kv_detach_first_token)
        student_params = self.student_kv + ([self.student_text.embeddings] if self.student_learns_token else [])
        self.opt_student = self._adamw(student_params, cfg.lr_student)
        if self.use_teacher:
            self.teacher_unet, self.teacher_sched = models.teacher_unet, models.teacher_scheduler
            self.teacher_kv = personalize.cross_attention_kv(self.teacher_unet, cfg.kv_detach_first_token)
            self.opt_teacher = self._adamw(self.teacher_kv + [self.teacher_text.embeddings], cfg.lr_teacher)
            with torch.no_grad():  # the unconditional context of CFG: the empty prompt, computed once (step 5)
                self.uncond = self.teacher_text.encode([""])  # (1, 77, D); has no <new1>, so it never changes
        disc_names = () if cfg.teacher_first else cfg.discriminators()
        self.discs = build_discriminators(models, disc_names, self.device, seed)
        self.opt_disc = (self._adamw([p for d in self.discs.values() for p in d.head.parameters()], cfg.lr_disc)
                         if self.discs else None)
        if "id_loss" in self.losses:  # frozen, read-only: the process-wide copies
            self.clip_vision, self.ip_proj = models.get_pristine("clip_vision"), models.get_pristine("ip_proj")

        # Data: the concept's photos (the first `shots`), Custom Diffusion's augmentation, "<new1> {class}".
        self.phrase = f"{cfg.token} {concept.class_noun}"
        self.factor = models.resolution // models.latent_size  # VAE downsampling (8 at paper scale)
        images = concept.images[: cfg.shots] if cfg.shots else concept.images
        self.batches = self._batches(load_pixels(images), seed)  # each photo resized once, from its own size

    # --- setup helpers ------------------------------------------------------------------------------------------
    def _new_token(self, role: str, word: str) -> Text:
        tokenizer, encoder = getattr(self.models, f"{role}_tokenizer"), getattr(self.models, f"{role}_text_encoder")
        token_id = personalize.add_token(tokenizer, encoder, self.cfg.token, word, lookup=self.init_lookup)
        text = Text(tokenizer, encoder, self.cfg.token)
        text.original = text.embeddings.detach().clone()  # (V, D): every other row is restored to this
        personalize.train_token_row(encoder, [token_id])  # a hook zeroes every other row's gradient
        return text

    def _adamw(self, params: list[torch.Tensor], lr: float) -> torch.optim.AdamW:
        return torch.optim.AdamW(params, lr=lr, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay)

    def _batches(self, images: list[torch.Tensor], seed: int) -> TrainingBatches:
        return TrainingBatches(images, self.phrase, self.cfg.batch_size, self.factor, seed, augment=self.cfg.augment,
                               hflip=self.cfg.hflip, templates=templates_for(self.cfg.augment),
                               size=self.models.resolution)

    def _amp(self) -> Any:
        return autocast(self.device, self.cfg.autocast_dtype)

    def _check(self, name: str, value: torch.Tensor, i: int, phase: str) -> float:
        """The scalar as a float; a non-finite loss ends the run as Diverged (recorded, not hidden)."""
        v = float(value.detach())
        if not math.isfinite(v):
            raise Diverged(f"non-finite {name} at iteration {i} ({phase})")
        return v

    def _restore_rows(self, text: Text) -> None:
        # Weight decay (and any optimiser drift) would move frozen rows: put them back after every step.
        personalize.restore_rows(text.encoder, text.original, [text.token_id])

    def _eps(self, b: int) -> torch.Tensor:
        """(B, 4, 64, 64) standard normal noise from the run's generator."""
        size = self.models.latent_size
        return torch.randn((b, self.student_unet.config.in_channels, size, size), generator=self.gen).to(self.device)

    def _randint(self, n: int) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (n,), generator=self.gen).to(self.device)

    @property
    def num_timesteps(self) -> int:
        return self.teacher_sched.config.num_train_timesteps

    # --- step 2: teacher update -------------------------------------------------------------------------------
    def teacher_step(self, pixels: torch.Tensor, masks: torch.Tensor, prompts: list[str], keys: tuple | None,
                     eps: torch.Tensor, i: int, phase: str, out: dict[str, float]) -> torch.Tensor:
        """Custom Diffusion's denoising loss on the (augmented) real images; steps teacher K/V + token row.

        pixels (B, 3, 512, 512) in [-1, 1]; masks (B, 1, 64, 64); keys: `Batch.keys` (None when augmented; else
        each photo's encoding is reused, see `Latents`); eps (B, 4, 64, 64), the iteration's shared noise.
        Returns the teacher's prompt context (B, 77, D) *detached*: the student and the teacher target use it, so
        the token learns only here (released code: one text-encoder pass per iteration).
        """
        with self._amp():
            latents = self.encode(pixels, keys, self.gen).float()
        t = self._randint(pixels.shape[0])  # t ~ U{0..999}, independent of t' below
        noisy = self.teacher_sched.add_noise(latents, eps, t)
        with self._amp():
            context = self.teacher_text.encode(prompts)  # (B, 77, D), gradient into the token row
            pred = self.teacher_unet(noisy, t, context).sample  # conditional prompt only
        if self.teacher_sched.config.prediction_type == "v_prediction":
            target = self.teacher_sched.get_velocity(latents, eps, t)
        elif self.teacher_sched.config.prediction_type == "epsilon":
            target = eps
        else:
            raise ValueError(f"unsupported teacher prediction_type {self.teacher_sched.config.prediction_type!r}")
        loss = L.teacher_loss(pred, target, masks, self.cfg.loss_normalisation)
        out["loss_teacher"] = self._check("loss_teacher", loss, i, phase)
        self.opt_teacher.zero_grad(set_to_none=True)
        loss.backward()
        params = self.teacher_kv + [self.teacher_text.embeddings]
        out["grad_teacher"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))
        self.opt_teacher.step()
        self._restore_rows(self.teacher_text)
        return context.detach()

    # --- step 3: one-step student -----------------------------------------------------------------------------
    def student_x0(self, eps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x0_s from eps in one step at t = 999 (spec "Models"), with the student scheduler's own values.

        sigma = sqrt((1 - a) / a) at the last training timestep (14.61 for SD's schedule: diffusers'
        `init_noise_sigma` for trailing spacing); latents = eps * sigma; the UNet sees latents / sqrt(sigma^2 + 1);
        x0_s = sigma * (eps - eps_hat). eps (B, 4, 64, 64) -> x0_s (B, 4, 64, 64), with gradient to K/V.
        """
        sched = self.student_sched
        t_max = sched.config.num_train_timesteps - 1
        a = sched.alphas_cumprod[t_max].to(self.device, torch.float32)
        sigma = ((1 - a) / a).sqrt()
        latents = eps * sigma
        model_in = latents / (sigma**2 + 1).sqrt()
        t = torch.full((eps.shape[0],), t_max, device=self.device, dtype=torch.long)
        with self._amp():
            pred = self.student_unet(model_in, t, context).sample.float()
        if sched.config.prediction_type == "epsilon":
            return sigma * (eps - pred)
        return predicted_x0(sched, model_in, t, pred)  # v-prediction students (not SD-Turbo)

    # --- step 5: teacher target -------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_target(self, x0_s: torch.Tensor, eps: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
        """x0_T: the teacher's CFG prediction of x0 from stopgrad(x0_s) noised with the same eps at t' ~ U{0..999}
        per sample. Returns (x0_T (B, 4, 64, 64), t' (B,))."""
        b = x0_s.shape[0]
        t2 = self._randint(b)
        x_t = self.teacher_sched.add_noise(x0_s.detach(), eps, t2)
        contexts = torch.cat([self.uncond.expand(b, -1, -1), context])  # (2B, 77, D): uncond, cond
        with self._amp():
            pred = self.teacher_unet(torch.cat([x_t, x_t]), torch.cat([t2, t2]), contexts).sample.float()
        uncond, cond = pred.chunk(2)
        guided = uncond + self.cfg.teacher_guidance * (cond - uncond)
        return predicted_x0(self.teacher_sched, x_t, t2, guided), t2

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, 64, 64) -> image (B, 3, 512, 512) in [-1, 1], not clamped; gradient flows if enabled."""
        with self._amp():
            return sampling.decode(self.vae, latents).float()

    # --- steps 1-8: one distillation iteration ---------------------------------------------------------------
    def iteration(self, i: int, batch: Any, phase: str = "distill") -> dict[str, float]:
        """One iteration in the spec's order; returns (and the caller logs) every scalar."""
        cfg, out = self.cfg, {}
        pixels, masks, prompts = batch.pixels.to(self.device), batch.masks.to(self.device), batch.prompts
        b = pixels.shape[0]
        # 1. one noise tensor, shared by the teacher loss (2), the student (3) and the teacher target (5)
        eps = self._eps(b)
        # 2. teacher update; its context, detached, is the student's (STE)
        # (`record_function` labels: the phase shares `bench perf` reports)
        if self.use_teacher:
            with record_function("bench/teacher_update"):
                context_T = self.teacher_step(pixels, masks, prompts, batch.keys, eps, i, phase, out)
        else:
            context_T = None
        context_S = context_T if self.shared else self.student_text.encode(prompts)
        # 3. student forward, decoded with gradient
        with record_function("bench/student_forward"):
            x0_s = self.student_x0(eps, context_S)
            img_s = self.decode(x0_s)
        terms: dict[str, torch.Tensor] = {}
        # 4. adversarial generator loss; the fake features are kept for the discriminator update (8)
        fake_features = {}
        for name, disc in self.discs.items():
            with record_function(f"bench/adversarial/{SHORT[name]}"), self._amp():
                fake_features[name] = disc.features(img_s).float()  # (B, d), gradient into img_s
            weight = getattr(cfg, f"weight_adv_{SHORT[name]}")
            terms[f"adv_{SHORT[name]}"] = weight * L.generator_loss(disc.head(fake_features[name]))
        # 5. teacher target (no gradient) and 6. alignment losses, each per sample times w(t'), batch mean
        align = [p for p in ("mse_loss", "id_loss", "msswd_loss") if p in self.losses]
        if align:
            with record_function("bench/teacher_target"):
                x0_T, t2 = self.teacher_target(x0_s, eps, context_T)
                img_T = self.decode(x0_T) if ("id_loss" in align or "msswd_loss" in align) else None
            w = L.timestep_weight(self.teacher_sched.alphas_cumprod, t2.cpu(), cfg.timestep_weighting).to(self.device)
            out["w_t"] = float(w.mean())
            for part in align:
                short = part.removesuffix("_loss")
                with record_function(f"bench/alignment/{short}"):
                    per_sample = self._alignment(part, x0_s, x0_T, img_s, img_T)
                out[f"raw_{short}"] = float(per_sample.detach().mean())
                terms[short] = getattr(cfg, f"weight_{short}") * (per_sample * w).mean()
        # 7. student update (K/V, and its own token row without STE), gradient clip
        for name, value in terms.items():
            out[name] = self._check(name, value, i, phase)
        total = sum(terms.values())
        out["loss_student"] = self._check("loss_student", total, i, phase)
        with record_function("bench/student_update"):
            self._step_student(total, out)
        # 8. discriminator update: real = the augmented batch, fake = stopgrad(img_s) (shared features, detached)
        if self.discs:
            with record_function("bench/disc_update"):
                self._step_discriminators(pixels, fake_features, i, phase, out)
        return out

    def _alignment(self, part: str, x0_s: torch.Tensor, x0_T: torch.Tensor, img_s: torch.Tensor,
                   img_T: torch.Tensor | None) -> torch.Tensor:
        """One alignment loss per sample, (B,)."""
        if part == "mse_loss":
            return L.latent_mse(x0_s, x0_T)
        if part == "id_loss":
            with self._amp():
                with torch.no_grad():
                    target = L.identity_features(self.clip_vision, self.ip_proj, img_T)  # (B, 4, 768)
                return L.identity_loss(L.identity_features(self.clip_vision, self.ip_proj, img_s), target)
        return L.msswd_loss(img_s, img_T, self.cfg.msswd_input, generator=self.gen)

    def _step_student(self, total: torch.Tensor, out: dict[str, float]) -> None:
        self.opt_student.zero_grad(set_to_none=True)
        total.backward()
        params = [p for g in self.opt_student.param_groups for p in g["params"]]
        out["grad_student"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))
        self.opt_student.step()
        if self.student_learns_token:
            self._restore_rows(self.student_text)

    def _step_discriminators(self, pixels: torch.Tensor, fake_features: dict[str, torch.Tensor], i: int, phase: str,
                             out: dict[str, float]) -> None:
        self.opt_disc.zero_grad(set_to_none=True)  # also clears what the generator loss left in the heads
        total = 0.0
        for name, disc in self.discs.items():
            with self._amp():
                real = real_features(disc, pixels).float()
            real_logits, fake_logits = disc.head(real), disc.head(fake_features[name].detach())
            loss = L.discriminator_loss(real_logits, fake_logits)
            short = SHORT[name]
            out[f"disc_{short}"] = self._check(f"disc_{short}", loss, i, phase)
            out[f"acc_real_{short}"] = L.accuracy(real_logits, L.REAL)
            out[f"acc_fake_{short}"] = L.accuracy(fake_logits, L.FAKE)
            total = total + loss
        total.backward()
        heads = [p for g in self.opt_disc.param_groups for p in g["params"]]
        out["grad_disc"] = float(torch.nn.utils.clip_grad_norm_(heads, float("inf")))  # the norm only, no clip
        self.opt_disc.step()

    # --- the stages ----------------------------------------------------------------------------------------------
    def run(self) -> EchoDistillModel:
        """Distillation, then the echo stage (or the teacher-first schedule); the final student with its views."""
        cfg = self.cfg
        offer_samples(self.log, Sampler(self.student_unet, self.student_sched, self.vae, self.student_text, None,
                                        cfg.eval_steps, 0.0, cfg.sample_batch_size, cfg.sample_dtype, None,
                                        cfg.sampler))  # the live student, for `--sample-every` grids
        if cfg.teacher_first:
            self.teacher_first()
            return self._result(before=None)
        self._loop("distill", cfg.iterations, self.iteration)
        before = None
        if cfg.uses("echo"):
            before = (capture(self.student_unet, self.student_text),
                      capture(self.teacher_unet, self.teacher_text) if self.use_teacher else None)
            # spec "Echo stage": the student's own samples replace the real images everywhere they appear
            self.batches = self._batches(self.echo_samples(), self.seed + 1)
            self._loop("echo", cfg.echo_iters, self.iteration)
        return self._result(before)

    def _loop(self, phase: str, n: int, step: Any) -> None:
        """`n` iterations of `step`, checkpointed every `checkpoint_every` (and at `n`) in `out_dir/phase`, resumed
        from there. A finished stage restores its final state and runs nothing."""
        ckpt = Checkpointer(self.out_dir / phase if self.out_dir is not None else None, self.cfg.checkpoint_every,
                            total=n, rows={name: [text.token_id] for name, text in self._texts().items()})
        state = self._checkpoint_state()
        start = ckpt.restore(**state)
        self.log.begin(phase, n)
        for i in range(start, n):
            self.log(i, **step(i, next(self.batches), phase))
            ckpt.maybe_save(i + 1, **state)

    def _texts(self) -> dict[str, Text]:
        """The token rows that learn, by checkpoint name (one with STE: the teacher's, which the student shares)."""
        texts = {"teacher_token": self.teacher_text} if self.use_teacher else {}
        if self.student_learns_token:
            texts["student_token"] = self.student_text
        return texts

    def _checkpoint_state(self) -> dict[str, dict[str, Any]]:
        """Everything the loop changes or draws from (`bench.models.checkpoint`); frozen weights are not saved."""
        tensors: dict[str, Any] = {"student_kv": self.student_kv}
        stateful: dict[str, Any] = {"opt_student": self.opt_student}
        if self.use_teacher:
            tensors["teacher_kv"] = self.teacher_kv
            stateful["opt_teacher"] = self.opt_teacher
        tensors.update({name: text.embeddings for name, text in self._texts().items()})
        if self.opt_disc is not None:
            stateful["opt_disc"] = self.opt_disc
            stateful.update({f"head_{name}": disc.head for name, disc in self.discs.items()})
        return dict(tensors=tensors, stateful=stateful, generators={"loop": self.gen},
                    randoms={"batches": self.batches.rng})

    @torch.no_grad()
    def echo_samples(self) -> list[torch.Tensor]:
        """`echo_samples` one-step images of the concept from the trained student, (3, 512, 512) in [-1, 1] each.

        Image k uses training template k % 25 and its own noise, seed 10000 * (run seed + 1) + k: the 25 templates
        x 4 noises by default, seeds apart from the evaluation noise seeds (`sampling.eval_noise_seed`, below 10000
        for evaluation seeds 0-9). Clamped to [-1, 1] as a saved image is.
        """
        n, templates = self.cfg.echo_samples, templates_for(self.cfg.augment)
        prompts = [templates[k % len(templates)].format(self.phrase) for k in range(n)]
        seeds = [10_000 * (self.seed + 1) + k for k in range(n)]
        images = []
        step = self.cfg.sample_batch_size
        for start in range(0, n, step):
            chunk_p, chunk_s = prompts[start:start + step], seeds[start:start + step]
            with self._amp():
                context = self.student_text.encode(chunk_p)
                # one step: every sampler gives the same image, so the sampling-only `sampler` never touches training
                latents = sampling.sample_latents(self.student_unet, self.student_sched, context, chunk_s, 1,
                                                  self.models.latent_size)
            images += list(self.decode(latents.float()).clamp(-1, 1).cpu())
        return images

    def teacher_first(self) -> None:
        """Paper Appendix H: the teacher alone for `iterations` (step 2 only), then the student for `iterations`
        from teacher samples (25 DDIM steps, CFG, from the same eps), identity loss only, no timestep weight."""
        cfg = self.cfg

        def teacher_only(i: int, batch: Any, phase: str) -> dict[str, float]:
            out: dict[str, float] = {}
            eps = self._eps(batch.pixels.shape[0])
            self.teacher_step(batch.pixels.to(self.device), batch.masks.to(self.device), batch.prompts, batch.keys,
                              eps, i, phase, out)
            return out

        def from_samples(i: int, batch: Any, phase: str) -> dict[str, float]:
            out: dict[str, float] = {}
            eps = self._eps(len(batch.prompts))
            with torch.no_grad():
                context_T = self.teacher_text.encode(batch.prompts)
                img_T = self.decode(self.teacher_sample(eps, context_T))
            context_S = context_T if self.shared else self.student_text.encode(batch.prompts)
            img_s = self.decode(self.student_x0(eps, context_S))
            with torch.no_grad(), self._amp():
                target = L.identity_features(self.clip_vision, self.ip_proj, img_T)
            with self._amp():
                loss = cfg.weight_id * L.identity_loss(L.identity_features(self.clip_vision, self.ip_proj, img_s),
                                                       target).mean()
            out["id"] = out["loss_student"] = self._check("id", loss, i, phase)
            self._step_student(loss, out)
            return out

        self._loop("teacher", cfg.iterations, teacher_only)
        self._loop("distill", cfg.iterations, from_samples)

    @torch.no_grad()
    def teacher_sample(self, eps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The teacher's multi-step CFG sample (B, 4, 64, 64) starting from eps (teacher-first distillation)."""
        sched = type(self.teacher_sched).from_config(self.teacher_sched.config)
        sched.set_timesteps(self.cfg.teacher_steps, device=self.device)
        latents = eps * sched.init_noise_sigma
        contexts = torch.cat([self.uncond.expand(eps.shape[0], -1, -1), context])
        for t in sched.timesteps:
            model_in = sched.scale_model_input(torch.cat([latents, latents]), t)
            with self._amp():
                uncond, cond = self.teacher_unet(model_in, t, contexts).sample.float().chunk(2)
            latents = sched.step(uncond + self.cfg.teacher_guidance * (cond - uncond), t, latents).prev_sample
        return latents

    def _result(self, before: tuple | None) -> EchoDistillModel:
        """Freeze everything again and wrap the final student and its views."""
        for module in [self.student_unet, self.student_text.encoder] + (
                [self.teacher_unet, self.teacher_text.encoder] if self.use_teacher else []):
            module.requires_grad_(False)
        cfg = self.cfg

        def sampler(role: str, state: Any = None) -> Sampler:
            if role == "student":
                return Sampler(self.student_unet, self.student_sched, self.vae, self.student_text, None,
                               cfg.eval_steps, 0.0, cfg.sample_batch_size, cfg.sample_dtype, state, cfg.sampler)
            return Sampler(self.teacher_unet, self.teacher_sched, self.vae, self.teacher_text, None,  # native size
                           cfg.teacher_steps, cfg.teacher_guidance, cfg.sample_batch_size, cfg.sample_dtype, state,
                           cfg.sampler)

        views = {}
        if before is not None:
            views["student_before_echo"] = sampler("student", before[0])
            if before[1] is not None:
                views["teacher_before_echo"] = sampler("teacher", before[1])
        teacher = sampler("teacher") if self.use_teacher else None
        return EchoDistillModel(sampler("student"), teacher, views, self.shared)


class EchoDistill:
    """The method as the harness sees it (`bench.api.Method`)."""

    name: ClassVar[str] = "echodistill"
    version: ClassVar[int] = 2
    """2: first-token K/V detach, released init token, templates and augmentation, mask-sum loss, [-1, 1] MS-SWD,
    fp32 training, per-sample echo noise (README, "Fidelity")."""
    resumable: ClassVar[bool] = True  # checkpoint_every, stage by stage (Session._loop)
    Config: ClassVar[type] = EchoDistillConfig
    variants: ClassVar[dict[str, dict[str, Any]]] = VARIANTS
    ablations: ClassVar[dict[str, str]] = ABLATIONS
    perf_overrides: ClassVar[dict[str, Any]] = PERF_OVERRIDES
    label: ClassVar[str] = "EchoDistill"
    table_view: ClassVar[str | None] = "student_before_echo"
    """The paper's main and ablation numbers are the student before the echo stage (method.md, variant `echo`)."""
    table_view_note: ClassVar[str] = "the student before the echo stage where the run has one (the paper's convention)"

    def __init__(self, config: EchoDistillConfig | None = None) -> None:
        self.config = config or EchoDistillConfig()

    def train(self, concept: Concept, models: Models, out_dir: Path, seed: int, log: Log) -> EchoDistillModel:
        return Session(self.config, concept, models, seed, log, out_dir).run()

    def load(self, weights_dir: Path, models: Models) -> EchoDistillModel:
        return load_model(Path(weights_dir), models, self.config.sample_batch_size, self.config.sample_dtype,
                          student_steps=self.config.eval_steps, sampler=self.config.sampler)
