"""Adapters to and from the rest of the ecosystem.

- ``export_peft_prompt_tuning``: an EPT/DePT/PT adapter as a plain PEFT prompt-tuning adapter
  (P* as ``prompt_embeddings``), which ``peft.PeftModel.from_pretrained`` loads. Exact for
  ``method="pt"``; for ``dept`` / ``ept`` PEFT cannot express the per-position low-rank update,
  so the export refuses unless ``allow_lossy=True`` and then reports the output difference.
- ``dept_checkpoint``: the files of DePT's released checkpoints (its PEFT fork's
  ``PROMPT_TUNING_LORA``: ``prompt_embeddings``, ``lora_embedding_A`` (n, r), ``lora_embedding_B``
  (r, d), scaling α/√r as here) as an ``EPTConfig`` and an adapter state dict.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .config import EPTConfig, Method, Readout
from .serialization import CONFIG_NAME, WEIGHTS_NAME, PathLike, read_tensors, write_adapter_files

logger = logging.getLogger(__name__)

DEPT_WEIGHT_FILES = ("adapter_model.bin", WEIGHTS_NAME)


def export_peft_prompt_tuning(model, directory: PathLike, adapter_name: Optional[str] = None, allow_lossy: bool = False,
                              sample_input_ids: Optional[torch.Tensor] = None) -> dict:
    """Write ``model``'s adapter (default: the active one) as a PEFT prompt-tuning adapter:
    ``prompt_embeddings`` = P* (m, d), the classifier heads under PEFT's names, and a
    ``PROMPT_TUNING`` config with ``num_transformer_submodules=1`` (the encoder-only prompt).

    Returns ``{"lossless": bool, "max_abs_difference": float}``: for ``pt`` exact (0.0); for
    ``dept`` / ``ept`` (only with ``allow_lossy=True``) the largest difference of the output
    logits between this adapter and the export, measured on ``sample_input_ids`` (b, T)
    (default: two random rows of min(n, 16) tokens)."""
    name = adapter_name or model.active_adapter
    config: EPTConfig = model.peft_config[name]
    if config.method is Method.HEAD:
        raise ValueError(f"export_peft_prompt_tuning: adapter {name!r} is method='head', which has no prompt to export")
    if config.method is not Method.PT:
        lost = f"method={config.method.value!r}, whose low-rank update of every input position"
    elif config.readout is not Readout.BACKBONE:
        lost = f"read out with readout={config.readout.value!r}, which"
    else:
        lost = None
    lossless = lost is None
    if not lossless and not allow_lossy:
        raise ValueError(
            f"export_peft_prompt_tuning: adapter {name!r} is {lost} PEFT's prompt tuning cannot express (only P* "
            f"and the head are exported, so outputs change); pass allow_lossy=True to export anyway and get the "
            f"measured difference"
        )
    tensors = model.adapter_state_dict(name)
    with torch.no_grad():
        prompt = model.prompt_encoders[name]().detach().float().cpu().contiguous()
    exported = {"prompt_embeddings": prompt}
    exported.update({key: tensor for key, tensor in tensors.items() if key.startswith("base_model.")})
    document = {
        "peft_type": "PROMPT_TUNING", "task_type": config.task_type.value,
        "num_virtual_tokens": config.num_virtual_tokens,
        "token_dim": config.token_dim, "num_transformer_submodules": 1, "num_attention_heads": None, "num_layers": None,
        "base_model_name_or_path": config.base_model_name_or_path, "revision": None, "inference_mode": True,
        "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None, "modules_to_save": list(model.heads) or None, "auto_mapping": None,
    }
    write_adapter_files(directory, document, exported)
    if lossless:
        return {"lossless": True, "max_abs_difference": 0.0}
    difference = _prefix_only_difference(model, name, prompt, sample_input_ids)
    logger.warning("export_peft_prompt_tuning: adapter %r (%s) exported without its low-rank update; the outputs "
                   "differ by up to %.3g on the sample", name, config.method.value, difference)
    return {"lossless": False, "max_abs_difference": difference}


@torch.no_grad()
def _prefix_only_difference(model, name: str, prompt: torch.Tensor, sample_input_ids: Optional[torch.Tensor]) -> float:
    """max |logits(adapter) - logits(P* prefix only)|, what PEFT computes from the export."""
    config = model.peft_config[name]
    table = model.word_embeddings.weight
    if sample_input_ids is None:
        generator = torch.Generator().manual_seed(0)
        sample_input_ids = torch.randint(table.shape[0], (2, min(config.max_length, 16)), generator=generator)
    ids = sample_input_ids.to(table.device)
    extra = {}
    if getattr(model.base_model.config, "is_encoder_decoder", False):
        start = model.base_model.config.decoder_start_token_id or 0
        extra["decoder_input_ids"] = torch.full((ids.shape[0], 1), start, dtype=torch.long, device=ids.device)
    training = model.training
    model.eval()  # no dropout in the measurement
    try:
        with model.active_for_a_while(name):
            with_update = model(input_ids=ids, **extra).logits
            prefix = prompt.to(table).unsqueeze(0).expand(ids.shape[0], -1, -1)
            embeds = torch.cat([prefix, model.word_embeddings(ids)], dim=1)
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=ids.device)
            prefix_only = model.base_model(inputs_embeds=embeds, attention_mask=mask, **extra).logits
    finally:
        model.train(training)
    return float((with_update.float() - prefix_only.float()).abs().max())


def dept_checkpoint(directory: PathLike) -> Tuple[EPTConfig, Dict[str, torch.Tensor]]:
    """Read a DePT checkpoint folder: its ``EPTConfig`` (method ``dept``) and the tensors
    ``prompt_encoder.prompt`` / ``lora_a`` / ``lora_b`` (fp32). Weights are read with
    ``weights_only=True`` (a pickle runs no code)."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"DePT checkpoint {directory}: expected {CONFIG_NAME}, which is missing")
    try:
        document = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {type(document).__name__}")
    if document.get("peft_type") != "PROMPT_TUNING_LORA":
        raise ValueError(f"{config_path}: expected DePT's peft_type 'PROMPT_TUNING_LORA', got "
                         f"{document.get('peft_type')!r}")
    weights = next((directory / name for name in DEPT_WEIGHT_FILES if (directory / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"DePT checkpoint {directory}: expected one of {list(DEPT_WEIGHT_FILES)}, none is "
                                f"there")
    if "num_virtual_tokens" not in document:
        raise ValueError(f"{config_path}: a DePT config names num_virtual_tokens (the prompt's length); it is missing")
    raw = (read_tensors(weights) if weights.suffix == ".safetensors"
           else torch.load(weights, map_location="cpu", weights_only=True))
    found = {key.rsplit(".", 1)[-1] if "lora_embedding" in key else key: value for key, value in raw.items()}
    missing = sorted({"prompt_embeddings", "lora_embedding_A", "lora_embedding_B"} - set(found))
    if missing:
        raise ValueError(f"{weights}: a DePT checkpoint holds prompt_embeddings, lora_embedding_A and "
                         f"lora_embedding_B; missing {missing} (found {sorted(raw)})")
    m, (n, r), d = document["num_virtual_tokens"], found["lora_embedding_A"].shape, found["lora_embedding_B"].shape[1]
    config = EPTConfig(method="dept", num_virtual_tokens=m, max_length=n, r=r,
                       lora_alpha=float(document.get("lora_alpha", 8)), token_dim=d, prompt_init="RANDOM",
                       task_type=document.get("task_type"),
                       base_model_name_or_path=document.get("base_model_name_or_path"))
    tensors = {"prompt_encoder.prompt": found["prompt_embeddings"][:m],  # the encoder's prompt (DePT uses only it)
               "prompt_encoder.lora_a": found["lora_embedding_A"], "prompt_encoder.lora_b": found["lora_embedding_B"]}
    return config, {key: value.float() for key, value in tensors.items()}
