"""The official InternVL2 preprocessing, restated: conversation templates (conversation.py),
label masking (the preprocess_* functions of internvl/train/dataset.py) and dynamic tiling.

Labels here are computed the official way, by tokenizing substrings and adding up their
lengths; when those offsets do not add up to the sequence, the official code masks the whole
sample and prints a warning. `mismatch` reports that case.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"

SYSTEM_V2 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
SYSTEM_V25 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


@dataclass
class Conv:
    system_template: str
    system_message: str
    roles: tuple[str, str]
    sep: str

    def prompt(self, messages: list[tuple[str, str]]) -> str:
        # SeparatorStyle.MPT
        out = self.system_template.format(system_message=self.system_message) + self.sep
        for role, msg in messages:
            out += role + msg + self.sep if msg else role
        return out


def conv_template(name: str) -> Conv:
    im_roles = ("<|im_start|>user\n", "<|im_start|>assistant\n")
    if name in ("Hermes-2", "internlm2-chat"):
        return Conv("<|im_start|>system\n{system_message}", SYSTEM_V2, im_roles, "<|im_end|>")
    if name == "phi3-chat":
        return Conv("<|system|>\n{system_message}", SYSTEM_V2, ("<|user|>\n", "<|assistant|>\n"), "<|end|>")
    if name == "internvl2_5":
        return Conv("<|im_start|>system\n{system_message}", SYSTEM_V25, im_roles, "<|im_end|>\n")
    raise ValueError(f"no reference for template {name}")


def image_tokens(n: int) -> str:
    return IMG_START + IMG_CONTEXT * n + IMG_END


def normalize_record(conversations: list[dict], num_images: int, video_frames: int | None) -> list[dict]:
    """The dataset-level placeholder rules applied before preprocessing."""
    conv = [dict(c) for c in conversations]
    first = next(i for i, c in enumerate(conv) if c["from"] == "human")
    if video_frames:
        if "<video>" not in conv[first]["value"]:
            conv[first]["value"] = "<video>\n" + conv[first]["value"]
        tags = "\n".join(f"Frame{i + 1}: <image>" for i in range(video_frames))
        conv[first]["value"] = conv[first]["value"].replace("<video>\n", tags)
    elif num_images and not any("<image>" in c["value"] for c in conv if c["from"] == "human"):
        conv[first]["value"] = "<image>\n" * num_images + conv[first]["value"]
    return conv


def _messages(conv: Conv, source: list[dict], strip: bool) -> tuple[list[tuple[str, str]], str | None]:
    system = None
    if source and source[0]["from"] == "system":
        # A system turn is a turn like the others: stripped where turns are.
        system, source = source[0]["value"], source[1:]
        system = system.strip() if strip else system
    while source and source[0]["from"] != "human":
        source = source[1:]
    if len(source) % 2:
        source = source[:-1]
    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    msgs = []
    for j, s in enumerate(source):
        role = roles[s["from"]]
        assert role == conv.roles[j % 2]
        msgs.append((role, s["value"].strip() if strip else s["value"]))
    return msgs, system


def _expand(text: str, tokens_per_image: list[int]) -> str:
    for n in tokens_per_image:
        text = text.replace("<image>", image_tokens(n), 1)
    return text


def add_internvl_tokens(tok) -> None:
    """What the official fine-tuning script does to the tokenizer before building the dataset
    (a no-op for a folder that already has them)."""
    tok.add_tokens([IMG_START, IMG_END, IMG_CONTEXT, "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"],
                   special_tokens=True)


def preprocess(template: str, source: list[dict], tok, tokens_per_image: list[int]) -> dict:
    """input_ids, labels and whether the official offsets broke (mismatch)."""
    if template == "internvl2_5":
        return _preprocess_internvl2_5(source, tok, tokens_per_image)
    conv = conv_template(template)
    msgs, system = _messages(conv, source, strip=template == "internlm2-chat")
    if system is not None:
        conv.system_message = system
    text = _expand(conv.prompt(msgs), tokens_per_image)
    ids = list(tok(text).input_ids)
    target = list(ids)
    n = lambda s: len(tok(s).input_ids)  # noqa: E731
    # The official code counts the tokens that are not padding (`target.ne(pad_token_id).sum()`).
    pad = tok.pad_token_id
    total = sum(1 for t in ids if t != pad) if pad is not None else len(ids)
    if template == "Hermes-2":
        cur = _mask_mpt(text, conv, target, n, start=0, bos_adjust=False)
    elif template == "phi3-chat":
        cur = _mask_mpt(text, conv, target, n, start=1, bos_adjust=True)
        eot = tok.convert_tokens_to_ids("<|endoftext|>")
        target = [IGNORE if t == eot else t for t in target]
    elif template == "internlm2-chat":
        cur = _mask_internlm(text, conv, target, n)
    else:
        raise ValueError(template)
    target[cur:] = [IGNORE] * max(0, len(target) - cur)
    mismatch = cur != total
    if mismatch:
        target = [IGNORE] * len(target)
    # conversation.py writes an empty message as its role alone (no separator): the official
    # offsets then count turns wrongly, and may even add up to the right total by chance.
    role_only = any(not m for _, m in msgs)
    return {"input_ids": ids, "labels": target, "mismatch": mismatch, "role_only": role_only, "text": text}


def _mask_mpt(text, conv, target, n, start, bos_adjust):
    sep = conv.sep
    turns = text.split(sep)
    groups = [sep.join(turns[:3])] + [sep.join(turns[i : i + 2]) for i in range(3, len(turns), 2)]
    cur = start
    target[:cur] = [IGNORE] * cur
    split_on = sep + conv.roles[1]
    for i, turn in enumerate(groups):
        if turn == "":
            break
        if bos_adjust:  # phi3: the tokenizer adds BOS to every substring
            turn_len = n(turn) if i == 0 else n(turn) - 1
        else:
            turn_len = n(turn) + 1
        parts = turn.split(split_on)
        if len(parts) != 2:
            break
        head = parts[0] + split_on
        instr = (n(head) - 1 if i == 0 else n(head) - 2) if bos_adjust else n(head)
        target[cur : cur + instr] = [IGNORE] * len(target[cur : cur + instr])
        cur += turn_len
    return cur


def _mask_internlm(text, conv, target, n):
    cur = 1
    target[:1] = [IGNORE]
    parts = text.split(conv.roles[1])
    head = parts[0] + conv.roles[1]
    k = n(head) - 1
    target[cur : cur + k] = [IGNORE] * len(target[cur : cur + k])
    cur += k
    for mid in parts[1:-1]:
        answer, question = mid.split(conv.roles[0])
        cur += n(answer) - 1
        k = n(conv.roles[0] + question + conv.roles[1]) - 1
        target[cur : cur + k] = [IGNORE] * len(target[cur : cur + k])
        cur += k
    cur += n(parts[-1]) - 1
    return cur


def _preprocess_internvl2_5(source, tok, tokens_per_image):
    conv = conv_template("internvl2_5")
    source = [dict(s) for s in source]
    system = conv.system_message
    if source and source[0]["from"] == "system":
        system, source = source[0]["value"], source[1:]
    while source and source[0]["from"] != "human":
        source = source[1:]
    if len(source) % 2:
        source = source[:-1]
    k = 0
    for s in source:
        if s["from"] == "human":
            for _ in range(s["value"].count("<image>")):
                s["value"] = s["value"].replace("<image>", image_tokens(tokens_per_image[k]), 1)
                k += 1
    parts = [("system", f"<|im_start|>system\n{system}<|im_end|>\n")]
    for s in source:
        role = "user" if s["from"] == "human" else "assistant"
        parts.append((s["from"], f"<|im_start|>{role}\n{s['value']}<|im_end|>\n"))
    # The official code asks `tokenizer.add_bos_token`; ask the tokenizer's behaviour instead,
    # which is the same for the slow and fast tokenizers of the family.
    empty = tok("").input_ids
    add_bos = tok.bos_token is not None and len(empty) > 0 and empty[0] == tok.bos_token_id
    texts = [p for _, p in parts]
    if add_bos:
        texts[0] = tok.bos_token + texts[0]
    enc = [list(x) for x in tok(texts).input_ids]
    if add_bos:
        enc = [e[1:] for e in enc]
    head = len(tok("<|im_start|>assistant\n").input_ids) - (1 if add_bos else 0)
    ids, labels = [], []
    for (role, _), e in zip(parts, enc):
        ids += e
        if role == "gpt":
            t = list(e)
            t[:head] = [IGNORE] * min(head, len(t))
            t[-1] = IGNORE
            labels += t
        else:
            labels += [IGNORE] * len(e)
    return {"input_ids": ids, "labels": labels, "mismatch": False, "text": "".join(texts)}


# --- dynamic tiling ---------------------------------------------------------------------------


def candidate_grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    grids = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return sorted(grids, key=lambda g: g[0] * g[1])


def closest_grid(w: int, h: int, min_num: int, max_num: int, image_size: int) -> tuple[int, int]:
    aspect, area = w / h, w * h
    best_diff, best = float("inf"), (1, 1)
    for g in candidate_grids(min_num, max_num):
        diff = abs(aspect - g[0] / g[1])
        if diff < best_diff:
            best_diff, best = diff, g
        elif diff == best_diff and area > 0.5 * image_size * image_size * g[0] * g[1]:
            best = g
    return best


def num_tiles(w, h, min_num, max_num, image_size, use_thumbnail) -> dict:
    cols, rows = closest_grid(w, h, min_num, max_num, image_size)
    thumb = bool(use_thumbnail and cols * rows != 1)
    return {"cols": cols, "rows": rows, "thumbnail": thumb, "tiles": cols * rows + thumb}
