"""The bodies of the server's POST requests (pydantic models: FastAPI answers a body that does
not fit one with a 422)."""

from typing import List, Optional, Union

from pydantic import BaseModel, ConfigDict


class ClassifyRequest(BaseModel):
    """``/v1/classify``: one input or a list; an input of a two-text task is [text, text_pair]."""

    model: str
    input: Union[str, List[Union[str, List[str]]]]
    truncate: bool = False


class CompletionRequest(BaseModel):
    """``/v1/completions``; sampling options that OpenAI clients send are ignored (decoding is greedy)."""

    model_config = ConfigDict(extra="allow")
    model: str
    prompt: Union[str, List[str]]
    max_tokens: Optional[int] = None
    truncate: bool = False


class LoadRequest(BaseModel):
    adapter_name: str
    adapter_path: str


class UnloadRequest(BaseModel):
    adapter_name: str
