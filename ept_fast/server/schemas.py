"""The bodies of the server's POST requests (pydantic models: FastAPI answers a body that does
not fit one with a 422). Types are strict: ``true`` is not a number, ``"2"`` not an integer, ``1``
not a boolean."""

from typing import List, Optional, Union

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr


class ClassifyRequest(BaseModel):
    """``/v1/classify``: one input or a list; an input of a two-text task is [text, text_pair]. A key
    it does not know is refused (a misspelt ``truncate`` would otherwise be dropped)."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr
    input: Union[StrictStr, List[Union[StrictStr, List[StrictStr]]]]
    truncate: StrictBool = False


class CompletionRequest(BaseModel):
    """``/v1/completions``. Sampling options that OpenAI clients send (``temperature``, ``top_p``, ...)
    are ignored: decoding is greedy. Options that change the answer's shape (``stream``, ``n``,
    ``echo``, ``logprobs``, ``stop``, ...) are refused by the endpoint unless they ask for nothing."""

    model_config = ConfigDict(extra="allow")
    model: StrictStr
    prompt: Union[StrictStr, List[StrictStr]]
    max_tokens: Optional[StrictInt] = None
    truncate: StrictBool = False


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter_name: StrictStr
    adapter_path: StrictStr


class UnloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter_name: StrictStr
