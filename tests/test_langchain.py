"""LangChain against `pagedcore serve` (CPU, a tiny random Llama): ChatOpenAI's
with_structured_output (JSON schema and function calling) and bind_tools, as LangChain users call
an OpenAI-compatible server. The schemas hold bounded values (a random model never closes a free
string) and ask for JSON without free whitespace."""

from __future__ import annotations

import pydantic
import pytest
from server_harness import start_tiny_server

langchain_openai = pytest.importorskip("langchain_openai", reason="langchain-openai is not installed")

KEY = "test-key-langchain"
COMPACT = {"structured_outputs": {"disable_any_whitespace": True}}


class Weather(pydantic.BaseModel):
    """The weather report of a city."""

    model_config = pydantic.ConfigDict(extra="forbid")

    city: str = pydantic.Field(json_schema_extra={"enum": ["Paris", "Oslo"]})
    degrees: int = pydantic.Field(ge=-40, le=50)
    sunny: bool


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    running = start_tiny_server(tmp_path_factory.mktemp("tiny-llama-langchain"), api_key=KEY)
    model = langchain_openai.ChatOpenAI(base_url=f"{running.base_url}/v1", api_key=KEY, model="tiny", max_tokens=80,
                                        temperature=0, max_retries=0, timeout=120, extra_body=COMPACT)
    yield model
    running.stop()


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_returns_the_pydantic_object(chat, method):
    report = chat.with_structured_output(Weather, method=method).invoke("Report the weather in Oslo.")
    assert isinstance(report, Weather)
    assert report.city in ("Paris", "Oslo") and -40 <= report.degrees <= 50


def test_bind_tools_gets_tool_calls(chat):
    def get_weather(city: str, sunny: bool) -> str:
        """Weather of a city."""
        return f"{city}: {'sunny' if sunny else 'cloudy'}"

    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}, "sunny": {"type": "boolean"}},
                       "required": ["city", "sunny"], "additionalProperties": False}}}
    message = chat.bind_tools([tool], tool_choice="required").invoke("Is it sunny in Paris?")
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call["name"] == "get_weather" and call["args"]["city"] in ("Paris", "Oslo")
    assert get_weather(**call["args"])  # the arguments fit the function
    named = chat.bind_tools([tool], tool_choice="get_weather").invoke("Weather in Oslo?")
    assert [c["name"] for c in named.tool_calls] == ["get_weather"]
