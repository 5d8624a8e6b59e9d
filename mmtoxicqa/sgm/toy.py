"""Small random models with known toxic neurons, for tests, benchmarks and sanity checks offline.

:func:`plant_neurons` edits a LLaMA-style model so that chosen neurons are exact detectors of a
trigger token, which makes "did SGM find and suppress the right neurons" a checkable fact:

* two residual dimensions are reserved: ``dim`` (the trigger signal) and ``out_dim`` (what the
  planted neurons write);
* every token embedding is 0 in both, except the trigger's ``dim`` entry, which is about one
  embedding standard deviation; otherwise the trigger looks like any other random token;
* nothing writes into ``dim`` (row ``dim`` of every ``o_proj``/``down_proj`` is 0), so after any
  RMSNorm it is exactly 0 at non-trigger positions and positive at trigger positions;
* a planted neuron's ``gate_proj``/``up_proj`` rows read only ``dim``, so its activation
  ``silu(c h) * c h`` is exactly 0 at every non-trigger position and large at the trigger;
  its ``down_proj`` column writes only into ``out_dim``, which nothing but the LM head reads;
* no other neuron and no attention projection reads ``dim`` or ``out_dim`` (columns zeroed).

So on inputs without the trigger the planted neurons are exactly 0 (dampening them changes
nothing, bit for bit), and on inputs with it they fire strongly and move the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def tiny_llama(
    vocab_size: int = 64,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_hidden_layers: int = 3,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A random LlamaForCausalLM in eval mode (no hub access)."""
    from transformers import LlamaConfig, LlamaForCausalLM  # heavy: transformers loads only where a model runs

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config.pad_token_id = 0
    return model


@torch.no_grad()
def plant_neurons(
    model,
    trigger_token: int,
    planted: Sequence[tuple[int, int]],
    dim: int = 0,
    out_dim: int = 1,
    gain: float = 4.0,
    write: float = 0.02,
):
    """Make each (layer, neuron) in ``planted`` an exact detector of ``trigger_token`` (see module doc)."""
    inner = model.get_decoder()
    embed = inner.embed_tokens.weight
    scale = float(embed.std())
    embed[:, dim] = 0
    embed[:, out_dim] = 0
    embed[trigger_token, dim] = scale
    by_layer: dict[int, list[int]] = {}
    for layer, neuron in planted:
        by_layer.setdefault(layer, []).append(neuron)
    for index, block in enumerate(inner.layers):
        attn, mlp = block.self_attn, block.mlp
        for reserved in (dim, out_dim):
            attn.o_proj.weight[reserved, :] = 0
            mlp.down_proj.weight[reserved, :] = 0
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                proj.weight[:, reserved] = 0
        for neuron in by_layer.get(index, []):
            for proj in (mlp.gate_proj, mlp.up_proj):
                proj.weight[neuron] = 0
                proj.weight[neuron, dim] = gain
            mlp.down_proj.weight[:, neuron] = 0
            mlp.down_proj.weight[out_dim, neuron] = write
    return model


def trigger_batches(
    n_per_class: int,
    trigger_token: int,
    vocab_size: int,
    seq_len: int = 12,
    batch_size: int = 8,
    seed: int = 0,
    pad_token: int = 0,
    left_pad: bool = True,
):
    """Random token inputs; toxic ones (label 1) contain ``trigger_token`` once, non-toxic ones never.

    Returns (batches, labels, input_ids, attention_mask), the last two for all inputs stacked.
    Every other input gets 1-3 left padding positions, so padding handling is exercised.
    Tokens 0-2 (pad/bos/eos) are not drawn; ``seq_len`` must exceed 3.
    """
    g = torch.Generator().manual_seed(seed)
    choices = torch.tensor([t for t in range(3, vocab_size) if t != trigger_token])
    rows, labels = [], []
    for label in (1, 0):
        for _ in range(n_per_class):
            ids = choices[torch.randint(len(choices), (seq_len,), generator=g)]
            if label:
                ids[int(torch.randint(3, seq_len, (1,), generator=g))] = trigger_token  # after any padding
            rows.append(ids)
            labels.append(label)
    order = torch.randperm(len(rows), generator=g)
    rows = [rows[i] for i in order]
    labels = [labels[i] for i in order]
    input_ids = torch.stack(rows)
    attention = torch.ones_like(input_ids)
    if left_pad:
        for i in range(0, len(rows), 2):
            pad = 1 + i % 3
            input_ids[i, :pad] = pad_token
            attention[i, :pad] = 0
    batches = [
        {"input_ids": input_ids[i : i + batch_size], "attention_mask": attention[i : i + batch_size]}
        for i in range(0, len(rows), batch_size)
    ]
    labels_t = torch.tensor(labels)
    return batches, labels_t, input_ids, attention
