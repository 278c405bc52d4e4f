"""Dialogs a user gives a trained decoder (``pipeline.api``, ``pipeline.read``): their shapes,
their length against the model's positions, and their continuation by the target itself."""

from __future__ import annotations

from typing import Any

from pipeline.data.schema import ROLES, DataError
from pipeline.mechanism.reading import target_mode


def parse_dialog(value: Any, file: str = "<dialog>", index: int = 0) -> tuple[list[dict], int]:
    """(messages, n_masked_turns) from any dialog shape, or a DataError naming the field."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    masked: Any = 0
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"messages", "n_masked_turns", "id"})
        if unknown:
            raise DataError(
                file,
                index,
                unknown[0],
                "unknown field; expected messages, n_masked_turns (and optionally id)",
            )
        masked = value.get("n_masked_turns", 0)
        value = value.get("messages")
    if not isinstance(value, list) or not value:
        raise DataError(file, index, "messages", "expected a non-empty list of messages")
    messages = []
    for j, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(file, index, f"messages[{j}].role", f"expected a role in {ROLES}")
        if not isinstance(message.get("content"), str):
            raise DataError(file, index, f"messages[{j}].content", "expected a string")
        messages.append({"role": message["role"], "content": message["content"]})
    if isinstance(masked, bool) or not isinstance(masked, int) or not 0 <= masked < len(messages):
        raise DataError(
            file,
            index,
            "n_masked_turns",
            f"{masked!r} must be an integer in 0..{len(messages) - 1}",
        )
    return messages, masked


def check_dialogs_fit(tokenizer, model, dialogs: list[tuple[list[dict], int]], file: str) -> None:
    """Refuse dialogs longer than the model's positions (they would be read wrongly, slowly)."""
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if not limit:
        return
    for index, (messages, _) in enumerate(dialogs):
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=messages[-1]["role"] == "user"
        )
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n > limit:
            raise DataError(
                file,
                index,
                "messages",
                f"the dialog is {n} tokens, beyond the model's {limit} positions; shorten it",
            )


def complete_dialogs(
    model, tokenizer, dialogs: list[tuple[list[dict], int]], tokens: int, batch_size: int = 8
) -> list[tuple[list[dict], int]]:
    """Each dialog that ends with a user turn, continued by the target itself (adapter off) for
    up to ``tokens`` greedy tokens as an assistant turn, as the training dialogs were: the masked
    turns (a system prompt) steer the reply, and the decoder then reads it too."""
    from pipeline.mechanism.completion import generate_completions

    open_ends = [i for i, (messages, _) in enumerate(dialogs) if messages[-1]["role"] == "user"]
    with target_mode(model):
        replies, _ = generate_completions(
            model, tokenizer, [dialogs[i][0] for i in open_ends], tokens, batch_size
        )
    completed = list(dialogs)
    for i, reply in zip(open_ends, replies, strict=True):
        if reply:
            messages, masked = dialogs[i]
            completed[i] = ([*messages, {"role": "assistant", "content": reply}], masked)
    return completed
