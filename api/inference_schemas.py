"""Request and response bodies of /v1/chat/completions, /v1/completions and /v1/predictions (OpenAI's shape).

Unknown fields are ignored, as OpenAI's own clients send some this service has no use for (`user`, ...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Text = Annotated[str, Field(max_length=100_000)]
ModelName = Annotated[str, Field(min_length=1, max_length=300)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | Annotated[list[TextPart], Field(max_length=64)]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class Sampling(BaseModel):
    """Fields chat and completions share."""

    model_config = ConfigDict(extra="ignore")
    model: ModelName
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate per choice.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=8)
    stop: (
        Annotated[str, Field(min_length=1, max_length=200)]
        | Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=4)]
        | None
    ) = None
    seed: int | None = Field(default=None, ge=0, le=2**62)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_completion_tokens: int | None = Field(default=None, ge=1, description="The same as max_tokens.")


class CompletionRequest(Sampling):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class PairInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Annotated[str, Field(max_length=20_000)]
    text_pair: Annotated[str, Field(max_length=20_000)] | None = None


PredictionInput = (
    Annotated[str, Field(max_length=20_000)]
    | Annotated[list[Annotated[str, Field(max_length=20_000)]], Field(min_length=2, max_length=2)]
    | PairInput
)


class PredictionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: ModelName
    input: Annotated[list[PredictionInput], Field(min_length=1, max_length=256)] = Field(
        description="Texts, [text, text_pair] pairs or {text, text_pair} objects."
    )

    def pairs(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in self.input:
            if isinstance(item, str):
                out.append({"text": item, "text_pair": None})
            elif isinstance(item, list):
                out.append({"text": item[0], "text_pair": item[1]})
            else:
                out.append({"text": item.text, "text_pair": item.text_pair})
        return out


class Prediction(BaseModel):
    object: Literal["prediction"] = "prediction"
    index: int
    label: str | None = Field(description="The predicted label (null for a regression model).")
    score: float = Field(description="The label's probability, or a regression model's value.")
    scores: dict[str, float] | None = Field(description="The probability of every label.")


class PredictionUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class PredictionList(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Prediction]
    usage: PredictionUsage
