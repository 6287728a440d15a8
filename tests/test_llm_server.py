"""The test LLM server's scripted agent model, through the real openai client (what the framework tests rely on)."""

from __future__ import annotations

import json

import openai
import pytest
from llm_server import answer_for, chat_turn, scripted_tool_call, tool_arguments

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HANDOFF = {"type": "function", "function": {"name": "transfer_to_weather", "parameters": {"type": "object"}}}


@pytest.fixture
def client(llm_server):
    return openai.OpenAI(base_url=llm_server.openai_url, api_key="test", max_retries=0)


def test_chat_calls_the_offered_tool_then_answers_once_its_result_is_in(client):
    """Chat: a request offering a tool gets a call of it; the request holding its result gets the text answer."""
    messages: list[dict] = [{"role": "user", "content": "weather?"}]
    first = client.chat.completions.create(model="script", messages=messages, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = client.chat.completions.create(model="script", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == answer_for("weather?")
    assert second.choices[0].finish_reason == "stop"
    assert first.id != second.id


def test_a_handoff_comes_before_other_tools_and_happens_once_per_turn():
    """A transfer_to_* tool is called first; after its result the next offered tool is called, not the handoff again."""
    turn = chat_turn([{"role": "user", "content": "hi"}])
    assert scripted_tool_call([HANDOFF, WEATHER], turn).name == "transfer_to_weather"
    after = chat_turn(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "transfer_to_weather"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "{}"},
        ]
    )
    assert scripted_tool_call([HANDOFF, WEATHER], after).name == "get_weather"
    assert scripted_tool_call([HANDOFF], after) is None


def test_earlier_turns_do_not_count_as_answered():
    """A tool answered in an earlier turn (before the last user message) is called again in the new turn."""
    history = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "get_weather"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "two"},
    ]
    call = scripted_tool_call([WEATHER], chat_turn(history))
    assert call is not None
    assert call.name == "get_weather"


def test_arguments_fit_the_tool_schema():
    """Enums take their first value (through $ref and anyOf too), strings the user's text, other types a plain value."""
    schema = {
        "type": "object",
        "properties": {
            "recipient": {"$ref": "#/$defs/Recipient"},
            "message": {"type": "string"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "count": {"type": "integer"},
            "urgent": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "$defs": {"Recipient": {"enum": ["Worker", "CEO"], "type": "string"}},
    }
    assert tool_arguments(schema, "do it") == {
        "recipient": "Worker",
        "message": "do it",
        "note": "do it",
        "count": 1,
        "urgent": False,
        "tags": [],
    }


def test_responses_stream_sends_the_full_event_sequence_with_unique_ids(client):
    """Responses, streamed: created, in_progress, output item and argument events, completed; ids unique per response."""
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
    kinds = []
    with client.responses.create(model="script", input="weather?", tools=[tool], stream=True) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.completed":
                final = event.response
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    assert final.output[0].name == "get_weather"
    text = client.responses.create(model="script", input="hi", stream=True)
    kinds = [event.type for event in text]
    assert "response.content_part.added" in kinds
    assert "response.output_text.done" in kinds
    again = client.responses.create(model="script", input="hi")
    assert again.output_text == answer_for("hi")
    assert again.id != final.id
