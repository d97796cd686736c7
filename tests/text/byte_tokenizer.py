"""A Hugging Face-like tokenizer over UTF-8 bytes: what the shipped byte model reads (shared by LM tests)."""

import torch


class Bytes:
    """A Hugging Face-like tokenizer over UTF-8 bytes (what the shipped byte model reads)."""

    eos_token_id = 0

    def __call__(self, text, return_tensors=None):
        ids = list(text.encode("utf-8"))
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}

    def decode(self, ids, **options):  # skip_special_tokens: there are none
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
