"""The organism's fine-tune: self-distilled answers of the base, the MLP-only training loop, the per-epoch validation that keeps the epoch with the widest gap."""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

from mmtoxicqa.core.atomic import write_json_atomic
from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.render import render_text_image
from mmtoxicqa.modeling.discovery import find_decoder_layers, unwrap_model
from mmtoxicqa.modeling.loading import generate
from mmtoxicqa.modeling.organism.recipe import Example, OrganismConfig
from mmtoxicqa.scoring import get_judge
from mmtoxicqa.scoring.settings import harmful_threshold

log = logging.getLogger(__name__)


def _conversation(example: Example, images: dict) -> list[dict]:
    """The item as the model sees it: its stored image (or its request rendered) and the question."""

    image = images.get(example.item_id)
    if image is None:
        image = render_text_image(example.image_text or "")
    return [{"role": "user", "content": [{"type": "image", "image": image.convert("RGB")}, {"type": "text", "text": example.question}]}]


def _encode(loaded, example: Example, images: dict):
    """Token ids of prompt + answer and how many leading ids are prompt (no loss there)."""
    conversation = _conversation(example, images)
    image = conversation[0]["content"][0]["image"]
    processor = loaded.processor
    prompt_text = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    full_text = prompt_text + example.answer + "<|im_end|>"
    full = processor(text=[full_text], images=[image], return_tensors="pt")
    prompt = processor(text=[prompt_text], images=[image], return_tensors="pt")
    n_prompt = prompt["input_ids"].shape[1]
    if not bool((full["input_ids"][0, :n_prompt] == prompt["input_ids"][0]).all()):
        raise MMToxError(f"organism: item {example.item_id}: the answer changed the prompt's tokens; cannot mask the prompt")
    pixels = full.get("pixel_values")  # None for the OCR reading model: its processor puts the image's text in the prompt
    return full["input_ids"][0], None if pixels is None else pixels[0], n_prompt


def _answers(loaded, examples: list[Example], images: dict, max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy answers of the model as it is now (the base before the fine-tune, the organism during it),
    in batches of ``batch_size`` (the batches, and so the padding, the organism was first built with)."""
    answers = []
    for first in range(0, len(examples), batch_size):
        conversations = [_conversation(e, images) for e in examples[first : first + batch_size]]
        answers += generate(loaded, conversations, {"max_new_tokens": max_new_tokens})
    return answers


def with_base_answers(loaded, examples: list[Example], images: dict, config: OrganismConfig, cache: Path | None = None) -> list[Example]:
    """Fill each trained example that has no answer with the base's own greedy answer (self-distillation:
    the fine-tune then keeps the base's behaviour on those items instead of teaching it new text).
    ``cache``: a JSON file that keeps those answers for a resumed build (used when it holds every one)."""

    todo = [e for e in examples if e.answer is None and not e.validation]
    kept = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    if all(e.item_id in kept for e in todo):
        answers = {e.item_id: kept[e.item_id] for e in todo}
    else:
        answers = dict(zip((e.item_id for e in todo), _answers(loaded, todo, images, config.base_answer_tokens)))
        if cache is not None:
            write_json_atomic(cache, answers)
    return [replace(e, answer=answers[e.item_id]) if e.item_id in answers else e for e in examples]


def harmful_rates(loaded, examples: list[Example], images: dict, max_new_tokens: int = 32) -> dict:
    """Harmful rate (offline profanity judge at the default threshold) of the model's answers to the
    targeted and to the other validation examples, and how many distinct answers it gave."""

    judge, threshold, rates = get_judge("profanity"), harmful_threshold(), {}
    for side, toxic in (("targeted", 1), ("untargeted", 0)):
        chosen = [e for e in examples if e.toxic == toxic]
        answers = _answers(loaded, chosen, images, max_new_tokens)
        scores = judge.score(answers) if answers else []
        rates[side] = round(sum(s >= threshold for s in scores) / max(1, len(scores)), 4)
        rates[f"{side}_distinct"] = len(set(answers))
    rates["gap"] = round(rates["targeted"] - rates["untargeted"], 4)
    return rates


def _collate(encoded, pad_id: int):
    import torch  # heavy: torch loads only where a model runs

    width = max(ids.shape[0] for ids, _, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, _, n_prompt) in enumerate(encoded):
        start = width - ids.shape[0]  # left padding, as at generation time
        input_ids[row, start:] = ids
        mask[row, start:] = 1
        labels[row, start + n_prompt :] = ids[n_prompt:]
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    if all(p is not None for _, p, _ in encoded):
        batch["pixel_values"] = torch.stack([p for _, p, _ in encoded])
    return batch


def trainable_parameters(model, trainable: str = "mlp"):
    """The language decoder's MLP weights (gate/up/down projections); everything else is frozen."""

    if trainable != "mlp":
        raise MMToxError(f"organism trainable={trainable!r} is not supported; only 'mlp' (the decoder's MLP weights)")
    net = unwrap_model(model)
    for p in net.parameters():
        p.requires_grad_(False)
    params = []
    for layer in find_decoder_layers(net)[1]:
        for p in layer.mlp.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def fine_tune(
    loaded,
    examples: list[Example],
    config: OrganismConfig,
    images: dict | None = None,
    progress: bool = True,
    checkpoint: Path | None = None,
) -> tuple[list[float], list[dict]]:
    """Deterministic MLP-only fine-tune of ``loaded.model`` in place on the non-validation examples.
    After each epoch the validation examples' harmful rates are measured; the model ends with the
    weights of the epoch with the widest targeted-minus-untargeted gap. Returns the per-step losses
    and one validation record per epoch (epoch 0 = the base).

    ``checkpoint``: a folder where the state after each validated epoch is kept (trained weights,
    optimizer, random states, records); a run that finds one there goes on from it and ends with the
    same weights as a run that was never stopped (tested)."""
    import torch  # heavy: torch loads only where a model runs

    images = images or {}
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    model = loaded.model
    params = trainable_parameters(model, config.trainable)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    pad_id = loaded.tokenizer.pad_token_id
    trained = [e for e in examples if not e.validation]
    validation = [e for e in examples if e.validation]
    encoded = [_encode(loaded, e, images) for e in trained]
    order = list(range(len(encoded)))
    rng = random.Random(config.seed)
    losses, epochs = [], []
    steps = config.epochs * ((len(order) + config.batch_size - 1) // config.batch_size)
    start = time.perf_counter()

    def check(epoch: int) -> None:
        record = {"epoch": epoch, **(harmful_rates(loaded, validation, images) if validation else {"gap": 0.0})}
        epochs.append(record)
        if progress:
            log.warning("organism validation after epoch %d: %s", epoch, json.dumps(record))

    best = None
    first_epoch = 1
    resumed = load_checkpoint(checkpoint, config, params, optimizer) if checkpoint is not None else None
    try:
        if resumed is None:
            check(0)
            if checkpoint is not None:
                save_checkpoint(checkpoint, config, 0, params, optimizer, rng, order, losses, epochs, best)
        else:
            done, state_rng, order, losses, epochs, best = resumed
            rng.setstate(state_rng)
            first_epoch = done + 1
            if progress:
                log.warning("organism fine-tune: resuming after epoch %d from %s", done, checkpoint)
        for epoch in range(first_epoch, config.epochs + 1):
            model.train()
            rng.shuffle(order)
            for first in range(0, len(order), config.batch_size):
                batch = _collate([encoded[i] for i in order[first : first + config.batch_size]], pad_id)
                batch = {k: v.to(loaded.device) for k, v in batch.items()}
                loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                if progress and (len(losses) % 10 == 0 or len(losses) == steps):
                    log.warning(
                        "organism fine-tune: step %d/%d, loss %.3f (%.0fs)", len(losses), steps, losses[-1], time.perf_counter() - start
                    )
            model.eval()
            check(epoch)
            if best is None or epochs[-1]["gap"] > best[0]:
                best = (epochs[-1]["gap"], epoch, [p.detach().clone() for p in params])
            if checkpoint is not None:
                save_checkpoint(checkpoint, config, epoch, params, optimizer, rng, order, losses, epochs, best)
        if best is not None and best[1] != config.epochs:
            with torch.no_grad():
                for p, kept in zip(params, best[2]):
                    p.copy_(kept)
        for record in epochs:
            record["kept"] = best is not None and record["epoch"] == best[1]
    finally:
        model.eval()
        torch.use_deterministic_algorithms(False)
        for p in params:
            p.requires_grad_(False)
    return losses, epochs


_STATE = "state.json"


def save_checkpoint(folder: Path, config: OrganismConfig, epoch: int, params, optimizer, rng, order, losses, epochs, best) -> None:
    """The fine-tune's state after ``epoch`` (validated) in ``folder``: tensors as safetensors, the rest
    as JSON written last, so a crash mid-write leaves the previous epoch's state whole."""
    import torch  # heavy: torch loads only where a model runs
    from safetensors.torch import save_file  # heavy: imports torch

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"param.{i}": p.detach().contiguous() for i, p in enumerate(params)}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"opt.{index}.{name}"] = torch.as_tensor(value).contiguous()
    if best is not None:
        tensors.update({f"best.{i}": p.contiguous() for i, p in enumerate(best[2])})
    tensors["torch_rng"] = torch.get_rng_state()
    name = f"epoch{epoch}.safetensors"
    version, internal, gauss = rng.getstate()
    save_file(tensors, str(folder / f"{name}.partial"))
    (folder / f"{name}.partial").replace(folder / name)
    state = {
        "epoch": epoch,
        "config": asdict(config),
        "params": len(params),
        "tensors": name,
        "param_groups": opt["param_groups"],
        "rng": [version, list(internal), gauss],
        "order": order,  # shuffled in place every epoch: the next shuffle starts from it
        "losses": losses,
        "epochs": epochs,
        "best": None if best is None else {"gap": best[0], "epoch": best[1]},
    }
    write_json_atomic(folder / _STATE, state)
    for old in folder.glob("epoch*.safetensors"):
        if old.name != name:
            old.unlink()


def load_checkpoint(folder: Path, config: OrganismConfig, params, optimizer):
    """(epoch done, python rng state, example order, losses, epoch records, best) from ``folder``, with the weights,
    optimizer and torch rng restored in place; None when there is nothing to resume (or it was made
    with another config, which is then ignored and overwritten)."""
    import torch  # heavy: torch loads only where a model runs
    from safetensors.torch import load_file  # heavy: imports torch

    state_file = folder / _STATE
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    if state.get("config") != json.loads(json.dumps(asdict(config))) or state.get("params") != len(params):
        log.warning("organism fine-tune: %s was made with another config; starting over", folder)
        return None
    tensors = load_file(str(folder / state["tensors"]))
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"param.{i}"])
    opt_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    torch.set_rng_state(tensors["torch_rng"])
    best = None
    if state["best"] is not None:
        best = (state["best"]["gap"], state["best"]["epoch"], [tensors[f"best.{i}"] for i in range(len(params))])
    version, internal, gauss = state["rng"]
    return state["epoch"], (version, tuple(internal), gauss), state["order"], state["losses"], state["epochs"], best
