//! Tests of the Responses translation, from recorded traffic: Responses requests and answers that
//! OpenAI's API received and sent (pydantic-ai's cassettes, `tests/fixtures/openai-responses/`), and
//! chat answers and streams of OpenAI and of other providers (through their translators).

use serde_json::{json, Value};

use super::*;
use crate::api::chat::parse_chat_request;
use crate::api::limits::DEFAULT_LIMITS;
use crate::providers::testutil::{assert_split_invariant, backend, cassette, interaction, upstream, CREATED};
use crate::providers::{self, Operation};

const SIMPLE: &str = include_str!("../../tests/fixtures/openai-responses/test_openai_responses_model_simple_response.yaml");
const TOOL_CALL: &str = include_str!("../../tests/fixtures/openai-responses/test_openai_responses_model_simple_response_with_tool_call.yaml");
const STREAM: &str = include_str!("../../tests/fixtures/openai-responses/test_openai_responses_stream.yaml");
const STREAM_USAGE: &str = include_str!("../../tests/fixtures/openai-responses/test_openai_responses_streaming_usage.yaml");
const IMAGE: &str = include_str!("../../tests/fixtures/openai-responses/test_openai_responses_image_url_input.yaml");
const NATIVE: &str = include_str!("../../tests/fixtures/openai-responses/test_native_output.yaml");
const THINKING: &str = include_str!("../../tests/fixtures/openai-responses/test_openai_responses_model_thinking_part.yaml");
const INSTRUCTIONS: &str = include_str!("../../tests/fixtures/openai-responses/test_openai_responses_model_instructions.yaml");
const HTTP_ERROR: &str = include_str!("../../tests/fixtures/openai-responses/test_openai_responses_model_http_error.yaml");

const CHAT_TOOLS: &str = include_str!("../../tests/fixtures/envoyproxy/ai-gateway/tests/internal/testopenai/cassettes/chat-tools.yaml");
const CHAT_STREAM: &str = include_str!("../../tests/fixtures/envoyproxy/ai-gateway/tests/internal/testopenai/cassettes/chat-streaming.yaml");
const DEEPSEEK: &str = include_str!("../../tests/fixtures/deepseek/test_deepseek_model_thinking_part.yaml");
const DEEPSEEK_STREAM: &str = include_str!("../../tests/fixtures/deepseek/test_deepseek_model_thinking_stream.yaml");
const ANTHROPIC_TOOL_STREAM: &str = include_str!("../../tests/fixtures/anthropic/tool_use_response.txt");

/// A recorded Responses request body (what a real client sent OpenAI).
fn recorded_request(yaml: &str, n: usize) -> Value {
    interaction(yaml, n)["request"]["parsed_body"].clone()
}

fn parse(v: &Value) -> Result<ResponsesRequest, ApiError> {
    parse_responses_request(v.to_string().as_bytes(), &DEFAULT_LIMITS)
}

fn err(v: Value) -> ApiError {
    parse(&v).unwrap_err()
}

fn ctx(req: &ResponsesRequest) -> ResponseContext {
    ResponseContext::new(req, "test1", CREATED)
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

#[test]
fn recorded_requests_become_valid_chat_requests() {
    // Every recorded request body translates into a chat request the gateway's own parser accepts.
    for (name, yaml, n) in [
        ("simple", SIMPLE, 0),
        ("tool call", TOOL_CALL, 0),
        ("tool result", TOOL_CALL, 1),
        ("stream", STREAM, 0),
        ("stream tool result", STREAM, 1),
        ("stream usage", STREAM_USAGE, 0),
        ("image", IMAGE, 0),
        ("json schema", NATIVE, 0),
        ("reasoning", THINKING, 0),
        ("instructions", INSTRUCTIONS, 0),
    ] {
        let body = recorded_request(yaml, n);
        let req = parse(&body).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(req.openai_only.is_empty(), "{name}: {:?}", req.openai_only);
        let chat = parse_chat_request(&req.chat_body()).unwrap_or_else(|e| panic!("{name}: {e:?} {}", req.chat));
        assert_eq!(chat.model, body["model"].as_str().unwrap(), "{name}");
        assert_eq!(chat.is_stream(), body["stream"] == json!(true), "{name}");
        if chat.is_stream() {
            assert!(chat.wants_stream_usage(), "{name}: a stream always asks for its usage");
        }
    }
}

/// The recorded input item of `kind`.
fn item<'v>(body: &'v Value, kind: &str) -> &'v Value {
    body["input"].as_array().unwrap().iter().find(|i| i["type"] == kind).unwrap_or_else(|| panic!("no {kind} item in {body}"))
}

#[test]
fn a_tool_round_trip_becomes_assistant_tool_calls_and_a_tool_message() {
    for (yaml, n) in [(TOOL_CALL, 1), (STREAM, 1)] {
        let body = recorded_request(yaml, n);
        let req = parse(&body).unwrap();
        let (call, result) = (item(&body, "function_call"), item(&body, "function_call_output"));
        let m = req.chat["messages"].as_array().unwrap();
        // Recorded: the user's question, the model's call, the call's output (no assistant text).
        assert_eq!(m.iter().map(|m| m["role"].as_str().unwrap()).collect::<Vec<_>>(), ["user", "assistant", "tool"], "{}", req.chat);
        assert_eq!(m[0], json!({"role": "user", "content": body["input"][0]["content"]}));
        assert!(m[1]["content"].is_null());
        assert_eq!(
            m[1]["tool_calls"],
            json!([{"id": call["call_id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}])
        );
        assert_eq!(m[2], json!({"role": "tool", "tool_call_id": result["call_id"], "content": result["output"]}));
        let tool = &body["tools"][0];
        let f = &req.chat["tools"][0]["function"];
        assert_eq!(req.chat["tools"][0]["type"], "function");
        assert_eq!((&f["name"], &f["parameters"], &f["strict"]), (&tool["name"], &tool["parameters"], &tool["strict"]));
        assert_eq!(f.get("description").cloned().unwrap_or(Value::Null), tool["description"]);
        assert_eq!(req.chat["tool_choice"], "auto");
    }
    // Assistant text before the call: the call joins that assistant message.
    let req = parse(&json!({"model": "m", "input": [
        {"role": "user", "content": "q"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "one"}]},
        {"type": "function_call_output", "call_id": "c2", "output": "two"}]}))
    .unwrap();
    let m = req.chat["messages"].as_array().unwrap();
    assert_eq!(m.len(), 4, "{}", req.chat);
    assert_eq!(m[1]["content"], "Let me look.");
    assert_eq!(m[1]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!((m[2]["content"].as_str(), m[3]["content"].as_str()), (Some("one"), Some("two")));
    parse_chat_request(&req.chat_body()).unwrap();
}

#[test]
fn images_instructions_schema_reasoning_and_limits_translate() {
    let body = recorded_request(IMAGE, 0);
    let req = parse(&body).unwrap();
    let part = &body["input"][0]["content"][1];
    assert_eq!(
        req.chat["messages"][0]["content"],
        json!([{"type": "text", "text": body["input"][0]["content"][0]["text"]},
               {"type": "image_url", "image_url": {"url": part["image_url"], "detail": part["detail"]}}])
    );
    let body = recorded_request(INSTRUCTIONS, 0);
    let req = parse(&body).unwrap();
    assert_eq!(req.chat["messages"][0], json!({"role": "system", "content": body["instructions"]}));
    assert_eq!(req.echo.fields["instructions"], body["instructions"]);

    let body = recorded_request(NATIVE, 0);
    let req = parse(&body).unwrap();
    let f = &body["text"]["format"];
    assert_eq!(req.chat["response_format"], json!({"type": "json_schema", "json_schema": {"name": f["name"], "schema": f["schema"], "strict": f["strict"]}}));
    let chat = parse_chat_request(&req.chat_body()).unwrap();
    assert!(matches!(chat.response_format, Some(crate::api::chat::ResponseFormat::JsonSchema { .. })));

    let body = recorded_request(THINKING, 0);
    let req = parse(&body).unwrap();
    assert_eq!(req.chat["reasoning_effort"], body["reasoning"]["effort"]);
    assert_eq!(req.echo.fields["reasoning"], json!({"effort": body["reasoning"]["effort"], "summary": body["reasoning"]["summary"]}));

    let body = recorded_request(STREAM_USAGE, 0);
    assert!(body["previous_response_id"].is_null(), "recorded with an explicit null");
    let req = parse(&body).unwrap();
    assert_eq!(req.chat["tool_choice"], "required");
    assert_eq!(req.chat["stream_options"], json!({"include_usage": true}));

    let req = parse(&json!({"model": "m", "input": "hi", "max_output_tokens": 77, "temperature": 0.2, "top_p": 0.5, "user": "u-1",
                            "text": {"format": {"type": "json_object"}}, "store": true, "metadata": {"k": "v"}, "include": ["reasoning.encrypted_content"]}))
    .unwrap();
    let chat = parse_chat_request(&req.chat_body()).unwrap();
    assert_eq!(chat.output_token_limit(), Some(77));
    assert_eq!((chat.temperature, chat.top_p, chat.user.as_deref()), (Some(0.2), Some(0.5), Some("u-1")));
    assert!(matches!(chat.response_format, Some(crate::api::chat::ResponseFormat::JsonObject)));
    assert!(req.chat.get("metadata").is_none() && req.chat.get("store").is_none() && req.chat.get("include").is_none());
    assert_eq!(req.echo.fields["store"], false, "the gateway stores nothing, whatever the client asked");
    assert_eq!(req.echo.fields["metadata"], json!({"k": "v"}));
}

#[test]
fn allowed_tools_and_named_choices() {
    let tools = json!([{"type": "function", "name": "a", "parameters": {"type": "object"}}, {"type": "function", "name": "b"}]);
    let req = parse(&json!({"model": "m", "input": "x", "tools": tools, "tool_choice": {"type": "function", "name": "b"}})).unwrap();
    assert_eq!(req.chat["tool_choice"], json!({"type": "function", "function": {"name": "b"}}));
    let req = parse(&json!({"model": "m", "input": "x", "tools": tools,
        "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "a"}]}}))
    .unwrap();
    assert_eq!(req.chat["tools"].as_array().unwrap().len(), 1);
    assert_eq!(req.chat["tools"][0]["function"]["name"], "a");
    assert_eq!(req.chat["tool_choice"], "required");
    let e = err(json!({"model": "m", "input": "x", "tools": tools, "tool_choice": {"type": "function", "name": "zzz"}}));
    assert_eq!(e.param.as_deref(), Some("tool_choice.name"));
}

#[test]
fn stateful_requests_are_refused_with_a_reason() {
    for (field, value) in [("previous_response_id", json!("resp_123")), ("conversation", json!("conv_1")), ("background", json!(true))] {
        let mut body = json!({"model": "m", "input": "hi"});
        body[field] = value;
        let e = err(body);
        assert_eq!((e.status, e.kind, e.param.as_deref(), e.code.as_deref()), (400, "invalid_request_error", Some(field), Some("unsupported_parameter")));
        assert!(e.message.contains("stateless") && e.message.contains(field), "{}", e.message);
    }
    // Explicit nulls and `background: false` are fine.
    parse(&json!({"model": "m", "input": "hi", "previous_response_id": null, "conversation": null, "background": false})).unwrap();
}

#[test]
fn bad_inputs_name_the_parameter() {
    for (body, param) in [
        (json!({"input": "hi"}), "model"),
        (json!({"model": "", "input": "hi"}), "model"),
        (json!({"model": "m"}), "input"),
        (json!({"model": "m", "input": []}), "input"),
        (json!({"model": "m", "input": 5}), "input"),
        (json!({"model": "m", "input": [5]}), "input[0]"),
        (json!({"model": "m", "input": [{"content": "x"}]}), "input[0].role"),
        (json!({"model": "m", "input": [{"role": "wizard", "content": "x"}]}), "input[0].role"),
        (json!({"model": "m", "input": [{"role": "user"}]}), "input[0].content"),
        (json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}), "input[0].content[0].text"),
        (json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_video"}]}]}), "input[0].content[0].type"),
        (json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]}), "input[0].content[0].image_url"),
        (json!({"model": "m", "input": [{"role": "user", "content": "x"}, {"type": "function_call", "name": "f", "arguments": "{}"}]}), "input[1].call_id"),
        (json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}), "input[0].output"),
        (json!({"model": "m", "input": "x", "tools": [{"type": "function"}]}), "tools[0].name"),
        (json!({"model": "m", "input": "x", "tools": {}}), "tools"),
        (json!({"model": "m", "input": "x", "tool_choice": "sometimes"}), "tool_choice"),
        (json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}), "text.format.name"),
        (json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}), "text.format.schema"),
        (json!({"model": "m", "input": "x", "max_output_tokens": -1}), "max_output_tokens"),
        (json!({"model": "m", "input": "x", "temperature": "hot"}), "temperature"),
        (json!({"model": "m", "input": "x", "stream": "yes"}), "stream"),
        (json!({"model": "m", "input": "x", "instructions": 3}), "instructions"),
        (json!({"model": "m", "input": "x", "reasoning": {"effort": 3}}), "reasoning.effort"),
    ] {
        let e = err(body.clone());
        assert_eq!((e.status, e.kind), (400, "invalid_request_error"), "{body}");
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
    }
    for bad in [&b"{not json"[..], b"", b"[1]"] {
        let e = parse_responses_request(bad, &DEFAULT_LIMITS).unwrap_err();
        assert_eq!(e.status, 400);
    }
}

#[test]
fn limits_apply_to_input_items_tools_and_images() {
    let mut limits = DEFAULT_LIMITS;
    limits.max_messages = 2;
    limits.max_tools = 1;
    limits.max_images = 1;
    let p = |v: Value| parse_responses_request(v.to_string().as_bytes(), &limits);
    assert_eq!(p(json!({"model": "m", "input": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "user", "content": "c"}]})).unwrap_err().param.as_deref(), Some("input"));
    let two_tools = json!([{"type": "function", "name": "a"}, {"type": "function", "name": "b"}]);
    assert_eq!(p(json!({"model": "m", "input": "x", "tools": two_tools})).unwrap_err().param.as_deref(), Some("tools"));
    let img = json!({"type": "input_image", "image_url": "https://example.com/a.png"});
    let e = p(json!({"model": "m", "input": [{"role": "user", "content": [img, img]}]})).unwrap_err();
    assert_eq!(e.code.as_deref(), Some("too_many_images"));
}

#[test]
fn openai_only_features_are_listed_not_lost() {
    let body = json!({"model": "gpt-4.1", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "look"}, {"type": "input_image", "file_id": "file-1"}]},
            {"type": "item_reference", "id": "msg_1"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"type": "reasoning", "id": "rs_1", "summary": []}],
        "tools": [{"type": "web_search_preview"}, {"type": "function", "name": "f"}],
        "prompt": {"id": "pmpt_1"}});
    let req = parse(&body).unwrap();
    assert_eq!(
        req.openai_only,
        ["prompt (a stored prompt)", "input[0].content[1] (an image by file_id)", "input[1] (item_reference)", "input[2] (web_search_call)", "tools[0] (web_search_preview)"]
    );
    // The translation keeps the rest, the reasoning item is dropped.
    assert_eq!(req.chat["messages"].as_array().unwrap().len(), 1);
    assert_eq!(req.chat["tools"].as_array().unwrap().len(), 1);
    let e = req.openai_only_error().unwrap();
    assert_eq!((e.status, e.param.as_deref(), e.code.as_deref()), (400, Some("prompt"), Some("unsupported_on_backend")));
    assert!(e.message.contains("web_search_preview") && e.message.contains("item_reference") && e.message.contains("not OpenAI"), "{}", e.message);
    // A request with only built-in tools is still a request (OpenAI serves it).
    let req = parse(&json!({"model": "m", "input": "news?", "tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}})).unwrap();
    assert_eq!(req.openai_only, ["tools[0] (web_search)", "tool_choice (web_search)"]);
    assert!(req.chat.get("tools").is_none() && req.chat.get("tool_choice").is_none());
    assert!(parse(&json!({"model": "m", "input": "x"})).unwrap().openai_only_error().is_none());
}

#[test]
fn the_chat_translation_reaches_other_schemas() {
    // The canonical request goes on through the providers' own translators.
    let body = recorded_request(TOOL_CALL, 1);
    let req = parse(&body).unwrap();
    let anthropic = backend(json!({"schema": "anthropic"}));
    let up = upstream(Operation::Chat, &anthropic, &req.chat, "claude-3-5-haiku-latest").unwrap();
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    let m = sent["messages"].as_array().unwrap();
    let call_id = &item(&body, "function_call")["call_id"];
    assert_eq!(&m[1]["content"].as_array().unwrap().iter().find(|b| b["type"] == "tool_use").unwrap()["id"], call_id);
    assert_eq!(m[2]["content"][0]["type"], "tool_result");
    assert_eq!(&m[2]["content"][0]["tool_use_id"], call_id);
    let gemini = backend(json!({"schema": "gemini"}));
    let up = upstream(Operation::Chat, &gemini, &req.chat, "gemini-2.0-flash").unwrap();
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    assert!(sent["contents"].as_array().unwrap().iter().any(|c| c["parts"][0].get("functionResponse").is_some()), "{sent}");
}

// ---------------------------------------------------------------------------------------------
// Whole answers
// ---------------------------------------------------------------------------------------------

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    k.sort();
    k
}

fn missing_keys(recorded: &Value, ours: &Value) -> Vec<String> {
    keys(recorded).into_iter().filter(|k| ours.get(k).is_none()).collect()
}

/// A recorded chat answer (go-vcr cassette body) as a Response.
fn chat_answer(yaml: &str) -> Vec<u8> {
    let c = cassette(yaml);
    let i = &c["interactions"][0]["response"];
    match i.get("body") {
        Some(Value::String(s)) => s.clone().into_bytes(),
        _ => serde_json::to_vec(&i["parsed_body"]).unwrap(),
    }
}

#[test]
fn chat_answers_become_response_objects_with_openais_fields() {
    let recorded = interaction(SIMPLE, 0)["response"]["parsed_body"].clone();
    let recorded_tool = interaction(TOOL_CALL, 0)["response"]["parsed_body"].clone();
    // A tool-calling chat answer of OpenAI's.
    let answer = chat_answer(CHAT_TOOLS);
    let a: Value = serde_json::from_slice(&answer).unwrap();
    let req = parse(&json!({"model": "gpt-5-nano", "input": "weather?", "tools": [{"type": "function", "name": "get_weather"}]})).unwrap();
    let r: Value = serde_json::from_slice(&response_from_chat(&answer, &ctx(&req)).unwrap()).unwrap();
    assert_eq!(missing_keys(&recorded, &r), Vec::<String>::new(), "every field of OpenAI's Response: {r}");
    assert_eq!((r["object"].as_str(), r["status"].as_str(), r["id"].as_str()), (Some("response"), Some("completed"), Some("resp_test1")));
    assert_eq!(r["model"], a["model"]);
    assert_eq!(r["created_at"], a["created"]);
    let calls = a["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    let out = r["output"].as_array().unwrap();
    let fcs: Vec<&Value> = out.iter().filter(|o| o["type"] == "function_call").collect();
    assert_eq!(fcs.len(), calls.len());
    for (fc, call) in fcs.iter().zip(calls) {
        assert_eq!(keys(fc), keys(&recorded_tool["output"][0]), "function_call item fields as OpenAI's");
        assert_eq!((&fc["call_id"], &fc["name"], &fc["arguments"]), (&call["id"], &call["function"]["name"], &call["function"]["arguments"]));
    }
    let u = &a["usage"];
    assert_eq!(r["usage"]["input_tokens"], u["prompt_tokens"]);
    assert_eq!(r["usage"]["output_tokens"], u["completion_tokens"]);
    assert_eq!(r["usage"]["total_tokens"], u["total_tokens"]);
    assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], u["completion_tokens_details"]["reasoning_tokens"]);
    assert_eq!(missing_keys(&recorded["usage"], &r["usage"]), Vec::<String>::new());
    assert_eq!(r["tools"], req.echo.fields["tools"]);

    // A text answer with reasoning (DeepSeek, recorded): a reasoning item, then the message.
    let ds = interaction(DEEPSEEK, 0)["response"]["parsed_body"].clone();
    let req = parse(&json!({"model": "deepseek-reasoner", "input": "hi"})).unwrap();
    let r: Value = serde_json::from_slice(&response_from_chat(&serde_json::to_vec(&ds).unwrap(), &ctx(&req)).unwrap()).unwrap();
    let out = r["output"].as_array().unwrap();
    assert_eq!(out[0]["type"], "reasoning");
    assert_eq!(out[0]["content"][0]["text"], ds["choices"][0]["message"]["reasoning_content"]);
    assert_eq!(out[1]["type"], "message");
    assert_eq!(keys(&out[1]), keys(&recorded["output"][0]), "message item fields as OpenAI's");
    assert_eq!(keys(&out[1]["content"][0]), keys(&recorded["output"][0]["content"][0]), "output_text fields as OpenAI's");
    assert_eq!(out[1]["content"][0]["text"], ds["choices"][0]["message"]["content"]);
}

#[test]
fn length_and_content_filter_are_incomplete() {
    let req = parse(&json!({"model": "m", "input": "x", "max_output_tokens": 5})).unwrap();
    for (finish, reason) in [("length", "max_output_tokens"), ("content_filter", "content_filter")] {
        let answer = json!({"id": "c", "object": "chat.completion", "created": 5, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "abc"}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}});
        let r: Value = serde_json::from_slice(&response_from_chat(answer.to_string().as_bytes(), &ctx(&req)).unwrap()).unwrap();
        assert_eq!((r["status"].as_str(), r["incomplete_details"]["reason"].as_str()), (Some("incomplete"), Some(reason)));
        assert_eq!(r["output"][0]["status"], "incomplete");
        assert_eq!(r["max_output_tokens"], 5);
    }
    let e = response_from_chat(b"<html>", &ctx(&req)).unwrap_err();
    assert_eq!((e.status, e.code.as_deref()), (502, Some("invalid_upstream_response")));
}

#[test]
fn openais_own_answers_are_summarised_for_accounting() {
    let body = serde_json::to_vec(&interaction(SIMPLE, 0)["response"]["parsed_body"]).unwrap();
    let (model, usage) = summarize_response(&body);
    assert_eq!(model.as_deref(), Some("gpt-4o-2024-08-06"));
    let u = usage.unwrap();
    assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (14, 8, 22));
    // The error shape of the Responses API is the OpenAI error the gateway already answers with.
    let e = &interaction(HTTP_ERROR, 0)["response"]["parsed_body"]["error"];
    let ours: Value = serde_json::from_slice(&ApiError::invalid_param("temperature", "x").with_code("decimal_below_min_value").to_json()).unwrap();
    assert_eq!(keys(&ours["error"]), keys(e));
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// The events of a Responses stream: (event name, data).
fn sse_events(out: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(out).expect("UTF-8");
    assert!(text.ends_with("\n\n"), "ends on an event boundary");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (ev, data) = e.split_once('\n').expect("event and data lines");
            let name = ev.strip_prefix("event: ").expect("event line").to_string();
            let v: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line")).expect("JSON");
            assert_eq!(v["type"], name.as_str(), "event name is the type");
            (name, v)
        })
        .collect()
}

/// What a client accumulates, checking the protocol the SDK enforces: `response.created` first;
/// sequence numbers from 0 without gaps; an item announced before its deltas, with the index of
/// its position; deltas and `done` events naming the item's id; every `done` text equal to its
/// deltas; the final response's output equal to the items as they were completed.
#[derive(Debug, Default)]
struct Accumulated {
    text: String,
    reasoning: String,
    calls: Vec<(String, String, String)>,
    terminal: String,
    response: Value,
    error: Option<Value>,
}

fn accumulate(events: &[(String, Value)]) -> Accumulated {
    let mut acc = Accumulated::default();
    let mut items: Vec<Value> = Vec::new();
    let mut done_items: Vec<Option<Value>> = Vec::new();
    let mut deltas: std::collections::HashMap<(usize, usize), String> = Default::default();
    let mut args: std::collections::HashMap<usize, String> = Default::default();
    let id = events[0].1["response"]["id"].clone();
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    assert_eq!(events[1].0, "response.in_progress");
    for (n, (name, e)) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], n, "sequence numbers count from 0: {e}");
        assert!(acc.terminal.is_empty(), "nothing after the terminal event: {name}");
        if let Some(r) = e.get("response") {
            assert_eq!(r["id"], id, "one response id");
            assert_eq!(r["object"], "response");
        }
        let oi = e["output_index"].as_u64().map(|i| i as usize);
        let item_id = |i: usize| items[i]["id"].clone();
        match name.as_str() {
            "response.output_item.added" => {
                assert_eq!(oi, Some(items.len()), "items are announced in order");
                assert_eq!(e["item"]["status"], "in_progress");
                items.push(e["item"].clone());
                done_items.push(None);
            }
            "response.content_part.added" => {
                let i = oi.unwrap();
                assert_eq!(e["item_id"], item_id(i));
                assert!(done_items[i].is_none());
            }
            "response.output_text.delta" | "response.reasoning_text.delta" | "response.refusal.delta" => {
                let i = oi.unwrap();
                assert_eq!(e["item_id"], item_id(i));
                assert!(done_items[i].is_none(), "no delta after the item is done");
                let d = e["delta"].as_str().unwrap();
                deltas.entry((i, e["content_index"].as_u64().unwrap() as usize)).or_default().push_str(d);
                if name == "response.output_text.delta" {
                    assert_eq!(items[i]["type"], "message");
                    acc.text.push_str(d);
                } else if name == "response.reasoning_text.delta" {
                    assert_eq!(items[i]["type"], "reasoning");
                    acc.reasoning.push_str(d);
                }
            }
            "response.output_text.done" | "response.reasoning_text.done" => {
                let i = oi.unwrap();
                assert_eq!(e["item_id"], item_id(i));
                assert_eq!(e["text"].as_str().unwrap(), deltas[&(i, e["content_index"].as_u64().unwrap() as usize)], "done text = its deltas");
            }
            "response.content_part.done" => {
                let i = oi.unwrap();
                let text = e["part"]["text"].as_str().or(e["part"]["refusal"].as_str()).unwrap();
                assert_eq!(text, deltas[&(i, e["content_index"].as_u64().unwrap() as usize)]);
            }
            "response.function_call_arguments.delta" => {
                let i = oi.unwrap();
                assert_eq!(items[i]["type"], "function_call");
                assert_eq!(e["item_id"], item_id(i));
                args.entry(i).or_default().push_str(e["delta"].as_str().unwrap());
            }
            "response.function_call_arguments.done" => {
                let i = oi.unwrap();
                assert_eq!(e["item_id"], item_id(i));
                assert_eq!(e["arguments"].as_str().unwrap(), args.get(&i).map_or("", String::as_str));
                assert_eq!(e["name"], items[i]["name"]);
            }
            "response.output_item.done" => {
                let i = oi.unwrap();
                assert_eq!(e["item"]["id"], item_id(i));
                assert_eq!(e["item"]["type"], items[i]["type"]);
                assert!(done_items[i].is_none(), "an item is done once");
                if e["item"]["type"] == "function_call" {
                    assert_eq!(e["item"]["arguments"].as_str().unwrap(), args.get(&i).map_or("", String::as_str));
                    acc.calls.push((
                        e["item"]["call_id"].as_str().unwrap().to_string(),
                        e["item"]["name"].as_str().unwrap().to_string(),
                        e["item"]["arguments"].as_str().unwrap().to_string(),
                    ));
                } else {
                    for (ci, part) in e["item"]["content"].as_array().unwrap().iter().enumerate() {
                        let text = part["text"].as_str().or(part["refusal"].as_str()).unwrap();
                        assert_eq!(text, deltas[&(i, ci)]);
                    }
                }
                done_items[i] = Some(e["item"].clone());
            }
            "response.completed" | "response.incomplete" => {
                let out = e["response"]["output"].as_array().unwrap();
                assert_eq!(out.len(), items.len());
                for (i, item) in out.iter().enumerate() {
                    assert_eq!(Some(item), done_items[i].as_ref(), "the final output is the completed items");
                }
                acc.terminal = name.clone();
                acc.response = e["response"].clone();
            }
            "response.failed" => {
                assert_eq!(e["response"]["status"], "failed");
                assert!(e["response"]["error"]["message"].is_string() && e["response"]["error"]["code"].is_string());
                acc.terminal = name.clone();
                acc.response = e["response"].clone();
            }
            "error" => {
                assert!(e["message"].is_string());
                acc.error = Some(e.clone());
            }
            "response.created" | "response.in_progress" => {}
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(!acc.terminal.is_empty(), "the stream ends with a terminal event");
    acc
}

fn translate_stream(req: &ResponsesRequest, chat_sse: &[u8]) -> Vec<u8> {
    let c = ctx(req);
    assert_split_invariant(&|| Box::new(ResponsesStream::new(c.clone())), chat_sse)
}

/// The chat chunks of a recorded OpenAI chat stream, and what they say.
fn chat_stream_text(sse: &str) -> (String, Value) {
    let mut text = String::new();
    let mut usage = Value::Null;
    for line in sse.lines() {
        let Some(d) = line.strip_prefix("data: ") else { continue };
        if d == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(d).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if v["usage"].is_object() {
            usage = v["usage"].clone();
        }
    }
    (text, usage)
}

#[test]
fn a_recorded_chat_stream_becomes_the_responses_event_sequence() {
    let sse = cassette(CHAT_STREAM)["interactions"][0]["response"]["body"].as_str().unwrap().to_string();
    let (text, usage) = chat_stream_text(&sse);
    assert!(!text.is_empty());
    let req = parse(&json!({"model": "gpt-5-nano", "input": "Hello!", "stream": true})).unwrap();
    let out = translate_stream(&req, sse.as_bytes());
    let events = sse_events(&out);
    let acc = accumulate(&events);
    assert_eq!(acc.terminal, "response.completed");
    assert_eq!(acc.text, text);
    assert_eq!(acc.response["output"][0]["content"][0]["text"], text.as_str());
    assert_eq!(acc.response["model"], "gpt-5-nano-2025-08-07");
    if usage.is_object() {
        assert_eq!(acc.response["usage"]["input_tokens"], usage["prompt_tokens"]);
        assert_eq!(acc.response["usage"]["output_tokens"], usage["completion_tokens"]);
    }
    // The order OpenAI's own stream has (recorded): created, in_progress, item added, part added,
    // deltas, text done, part done, item done, completed.
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).filter(|n| *n != "response.output_text.delta").collect();
    assert_eq!(
        names,
        ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added", "response.output_text.done",
         "response.content_part.done", "response.output_item.done", "response.completed"]
    );
}

/// The event data fields of a recorded OpenAI Responses stream, by event type.
fn recorded_event_keys(yaml: &str) -> std::collections::HashMap<String, Vec<String>> {
    let mut m = std::collections::HashMap::new();
    for i in cassette(yaml)["interactions"].as_array().unwrap() {
        let body = i["response"]["body"]["string"].as_str().unwrap_or_default();
        for line in body.lines() {
            if let Some(d) = line.strip_prefix("data: ") {
                let v: Value = serde_json::from_str(d).unwrap();
                m.insert(v["type"].as_str().unwrap().to_string(), keys(&v));
            }
        }
    }
    m
}

#[test]
fn our_events_carry_every_field_of_openais_recorded_events() {
    let mut recorded = recorded_event_keys(STREAM);
    recorded.extend(recorded_event_keys(STREAM_USAGE));
    let sse = cassette(CHAT_STREAM)["interactions"][0]["response"]["body"].as_str().unwrap().to_string();
    let req = parse(&json!({"model": "gpt-5-nano", "input": "Hello!", "stream": true})).unwrap();
    let mut ours = sse_events(&translate_stream(&req, sse.as_bytes()));
    ours.extend(sse_events(&tool_stream_through_anthropic()));
    let mut compared = 0;
    for (name, e) in &ours {
        if let Some(want) = recorded.get(name) {
            // `obfuscation` is random padding OpenAI adds against length side channels, not data.
            let missing: Vec<&String> = want.iter().filter(|k| *k != "obfuscation" && e.get(k.as_str()).is_none()).collect();
            assert!(missing.is_empty(), "{name} lacks {missing:?}: {e}");
            compared += 1;
        }
    }
    assert!(compared > 10, "compared {compared} events");
    for name in ["response.created", "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.completed"] {
        assert!(recorded.contains_key(name), "{name} is in the recordings");
    }
}

/// Anthropic's recorded tool-use stream, through the Anthropic translator (to chat) and then to
/// Responses events: a cross-schema stream with text and a function call.
fn tool_stream_through_anthropic() -> Vec<u8> {
    let mut chat = Vec::new();
    let mut t = providers::anthropic::StreamTranslator::new(CREATED);
    t.push(ANTHROPIC_TOOL_STREAM.as_bytes(), &mut chat);
    t.finish(&mut chat);
    let req = parse(&json!({"model": "claude", "input": "weather?", "stream": true, "tools": [{"type": "function", "name": "get_weather"}]})).unwrap();
    translate_stream(&req, &chat)
}

#[test]
fn a_recorded_tool_use_stream_of_another_schema_becomes_function_call_events() {
    let events = sse_events(&tool_stream_through_anthropic());
    let acc = accumulate(&events);
    assert_eq!(acc.terminal, "response.completed");
    // From the recording: the text block, then a tool_use block whose input arrives in pieces.
    let mut text = String::new();
    let mut input = String::new();
    let mut tool = (String::new(), String::new());
    for line in ANTHROPIC_TOOL_STREAM.lines() {
        let Some(d) = line.strip_prefix("data: ") else { continue };
        let v: Value = serde_json::from_str(d.trim()).unwrap();
        match (v["type"].as_str(), v["delta"]["type"].as_str()) {
            (Some("content_block_delta"), Some("text_delta")) => text.push_str(v["delta"]["text"].as_str().unwrap()),
            (Some("content_block_delta"), Some("input_json_delta")) => input.push_str(v["delta"]["partial_json"].as_str().unwrap()),
            (Some("content_block_start"), _) if v["content_block"]["type"] == "tool_use" => {
                tool = (v["content_block"]["id"].as_str().unwrap().to_string(), v["content_block"]["name"].as_str().unwrap().to_string());
            }
            _ => {}
        }
    }
    assert_eq!(acc.text, text);
    assert_eq!(acc.calls.len(), 1);
    assert_eq!((&acc.calls[0].0, &acc.calls[0].1), (&tool.0, &tool.1));
    let got: Value = serde_json::from_str(&acc.calls[0].2).unwrap();
    let want: Value = serde_json::from_str(&input).unwrap();
    assert_eq!(got, want);
    // The message item is done before the call is announced, as in OpenAI's streams.
    let pos = |n: &str, pred: &dyn Fn(&Value) -> bool| events.iter().position(|(name, e)| name == n && pred(e)).unwrap();
    assert!(pos("response.output_item.done", &|e| e["item"]["type"] == "message") < pos("response.output_item.added", &|e| e["item"]["type"] == "function_call"));
    assert!(acc.response["usage"]["input_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn a_recorded_reasoning_stream_becomes_a_reasoning_item_then_a_message() {
    let sse = cassette(DEEPSEEK_STREAM)["interactions"][0]["response"]["body"]["string"].as_str().unwrap().to_string();
    let mut reasoning = String::new();
    let mut text = String::new();
    for line in sse.lines() {
        let Some(d) = line.strip_prefix("data: ") else { continue };
        if d == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(d).unwrap();
        reasoning.push_str(v["choices"][0]["delta"]["reasoning_content"].as_str().unwrap_or(""));
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert!(!reasoning.is_empty() && !text.is_empty());
    let req = parse(&json!({"model": "deepseek-reasoner", "input": "hi", "stream": true})).unwrap();
    let acc = accumulate(&sse_events(&translate_stream(&req, sse.as_bytes())));
    assert_eq!((acc.reasoning.as_str(), acc.text.as_str()), (reasoning.as_str(), text.as_str()));
    let out = acc.response["output"].as_array().unwrap();
    assert_eq!((out[0]["type"].as_str(), out[1]["type"].as_str()), (Some("reasoning"), Some("message")));
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    format!("data: {}\n\n", json!({"id": "c", "object": "chat.completion.chunk", "created": 7, "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
}

#[test]
fn failures_end_the_stream_with_error_and_response_failed() {
    let req = parse(&json!({"model": "m", "input": "x", "stream": true})).unwrap();
    let head = chunk(json!({"role": "assistant", "content": "Hel"}), None);
    // An error event from upstream (the gateway's or the provider's, OpenAI-shaped).
    let mid = format!("{head}data: {{\"error\":{{\"message\":\"Overloaded\",\"type\":\"service_unavailable_error\",\"param\":null,\"code\":\"overloaded\"}}}}\n\n");
    let acc = accumulate(&sse_events(&translate_stream(&req, mid.as_bytes())));
    assert_eq!(acc.terminal, "response.failed");
    assert_eq!(acc.error.as_ref().unwrap()["code"], "overloaded");
    assert_eq!(acc.response["error"], json!({"code": "server_error", "message": "Overloaded"}));
    assert_eq!(acc.response["output"][0]["content"][0]["text"], "Hel", "what was produced is kept");
    // Cut before [DONE].
    let acc = accumulate(&sse_events(&translate_stream(&req, head.as_bytes())));
    assert_eq!((acc.terminal.as_str(), acc.error.as_ref().unwrap()["code"].as_str()), ("response.failed", Some("stream_truncated")));
    // Nothing at all.
    let acc = accumulate(&sse_events(&translate_stream(&req, b"")));
    assert_eq!(acc.terminal, "response.failed");
    // Garbage.
    let acc = accumulate(&sse_events(&translate_stream(&req, b"data: {nope\n\n")));
    assert_eq!(acc.error.as_ref().unwrap()["code"], "invalid_upstream_event");
    // A rate limit keeps its meaning in `response.error.code`.
    let rl = "data: {\"error\":{\"message\":\"slow down\",\"type\":\"rate_limit_error\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}\n\n";
    let acc = accumulate(&sse_events(&translate_stream(&req, rl.as_bytes())));
    assert_eq!(acc.response["error"]["code"], "rate_limit_exceeded");
}

#[test]
fn a_stream_cut_by_max_tokens_is_incomplete_and_parallel_calls_are_items() {
    let req = parse(&json!({"model": "m", "input": "x", "stream": true, "max_output_tokens": 3})).unwrap();
    let s = format!("{}{}data: [DONE]\n\n", chunk(json!({"content": "abc"}), None), chunk(json!({}), Some("length")));
    let acc = accumulate(&sse_events(&translate_stream(&req, s.as_bytes())));
    assert_eq!(acc.terminal, "response.incomplete");
    assert_eq!(acc.response["incomplete_details"]["reason"], "max_output_tokens");
    // Two calls, interleaved by index: two function_call items with their own arguments.
    let s = [
        chunk(json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]}), None),
        chunk(json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{"}}]}), None),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}), None),
        chunk(json!({"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]}), None),
        chunk(json!({}), Some("tool_calls")),
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}\n\ndata: [DONE]\n\n".to_string(),
    ]
    .concat();
    let acc = accumulate(&sse_events(&translate_stream(&req, s.as_bytes())));
    assert_eq!(acc.terminal, "response.completed");
    assert_eq!(
        acc.calls,
        [("call_a".to_string(), "f".to_string(), "{\"a\":1}".to_string()), ("call_b".to_string(), "g".to_string(), "{}".to_string())]
    );
    assert_eq!(acc.response["usage"]["total_tokens"], 13);
}

// ---------------------------------------------------------------------------------------------
// OpenAI's own answers, read back into the canonical form (native passthrough)
// ---------------------------------------------------------------------------------------------

#[test]
fn openais_own_answers_read_back_as_canonical_chat() {
    // Recorded Responses answers → chat completions the gateway's own summary and parser read.
    let tool = interaction(TOOL_CALL, 0)["response"]["parsed_body"].clone();
    let chat: Value = serde_json::from_slice(&chat_from_response(&serde_json::to_vec(&tool).unwrap(), 1).unwrap()).unwrap();
    let fc = &tool["output"][0];
    assert_eq!(chat["choices"][0]["message"]["tool_calls"][0], json!({"id": fc["call_id"], "type": "function", "function": {"name": fc["name"], "arguments": fc["arguments"]}}));
    assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chat["usage"]["prompt_tokens"], tool["usage"]["input_tokens"]);
    assert_eq!(chat["usage"]["total_tokens"], tool["usage"]["total_tokens"]);
    assert_eq!(chat["model"], tool["model"]);
    let simple = interaction(SIMPLE, 0)["response"]["parsed_body"].clone();
    let body = chat_from_response(&serde_json::to_vec(&simple).unwrap(), 1).unwrap();
    let summary = crate::api::chat::ResponseSummary::parse(&body);
    assert_eq!(summary.model.as_deref(), simple["model"].as_str());
    assert_eq!(summary.usage.unwrap().completion_tokens, simple["usage"]["output_tokens"].as_u64().unwrap());
    let chat: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(chat["choices"][0]["message"]["content"], simple["output"][0]["content"][0]["text"]);
    assert_eq!(chat["choices"][0]["finish_reason"], "stop");
    let thinking = interaction(THINKING, 0)["response"]["parsed_body"].clone();
    let chat: Value = serde_json::from_slice(&chat_from_response(&serde_json::to_vec(&thinking).unwrap(), 1).unwrap()).unwrap();
    let summary_text = thinking["output"][0]["summary"][0]["text"].as_str().unwrap();
    assert!(chat["choices"][0]["message"]["reasoning_content"].as_str().unwrap().starts_with(summary_text));
    assert_eq!(chat["usage"]["completion_tokens_details"]["reasoning_tokens"], thinking["usage"]["output_tokens_details"]["reasoning_tokens"]);
    assert_eq!(chat_from_response(b"nope", 1).unwrap_err().status, 502);
}

#[test]
fn openais_own_streams_read_back_as_canonical_chunks() {
    use crate::providers::testutil::summarize;
    for yaml in [STREAM, STREAM_USAGE] {
        let interaction0 = &cassette(yaml)["interactions"][0];
        let body = interaction0["response"]["body"]["string"].as_str().unwrap().to_string();
        let completed = body.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str::<Value>(d).unwrap()).find(|e| e["type"] == "response.completed").unwrap();
        let r = &completed["response"];
        let out = assert_split_invariant(&|| Box::new(ChatFromResponses::new(1)), body.as_bytes());
        let model = r["model"].as_str().unwrap();
        let sum = summarize(&out, None, model, None);
        assert!(sum.done && sum.role_first && sum.error.is_none());
        assert_eq!(sum.finish, ["tool_calls"]);
        let calls: Vec<&Value> = r["output"].as_array().unwrap().iter().filter(|o| o["type"] == "function_call").collect();
        assert_eq!(sum.tools.len(), calls.len());
        for (got, want) in sum.tools.iter().zip(calls) {
            assert_eq!((got.0.as_str(), got.1.as_str(), got.2.as_str()), (want["call_id"].as_str().unwrap(), want["name"].as_str().unwrap(), want["arguments"].as_str().unwrap()));
        }
        let usage = sum.usage.unwrap();
        assert_eq!((usage["prompt_tokens"].clone(), usage["completion_tokens"].clone()), (r["usage"]["input_tokens"].clone(), r["usage"]["output_tokens"].clone()));
        // The gateway's own usage tap reads it as it reads any chat stream.
        let mut tap = crate::stream::usage_tap::UsageTap::new(true);
        let mut sink = Vec::new();
        tap.push(&out, &mut sink);
        tap.finish(&mut sink);
        assert!(tap.completed() && !tap.saw_error() && tap.first_token_seen());
        assert_eq!(tap.model(), Some(model));
        assert_eq!(tap.usage().unwrap().total_tokens, r["usage"]["total_tokens"].as_u64().unwrap());
    }
    // A failed or cut stream is an error for the accounting too.
    let mut t = ChatFromResponses::new(1);
    let mut out = Vec::new();
    t.push(b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"model\":\"m\"}}\n\n", &mut out);
    t.finish(&mut out);
    assert_eq!(crate::providers::testutil::summarize(&out, None, "m", None).error.unwrap()["code"], "stream_truncated");
    let mut t = ChatFromResponses::new(1);
    let mut out = Vec::new();
    t.push(b"data: {\"type\":\"response.failed\",\"response\":{\"id\":\"r\",\"model\":\"m\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"boom\"}}}\n\n", &mut out);
    t.finish(&mut out);
    let e = crate::providers::testutil::summarize(&out, None, "m", None).error.unwrap();
    assert_eq!((e["code"].as_str(), e["message"].as_str()), (Some("server_error"), Some("boom")));
}

#[test]
fn the_answer_writer_builds_ids_and_echo_from_the_original_body() {
    let original = br#"{"model":"gpt-x","input":"hi","instructions":"Be brief.","tools":[{"type":"function","name":"f"}],"metadata":{"a":"b"}}"#;
    let mut w = AnswerWriter::new(false, original, "0123456789abcdef01234567", 5);
    let answer = br#"{"id":"c","object":"chat.completion","created":9,"model":"served","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#;
    let r: Value = serde_json::from_slice(&w.answer(answer).unwrap()).unwrap();
    assert_eq!(r["id"], "resp_0123456789abcdef01234567");
    assert_eq!((r["instructions"].as_str(), r["metadata"]["a"].as_str(), r["model"].as_str()), (Some("Be brief."), Some("b"), Some("served")));
    assert_eq!(r["tools"][0]["name"], "f");
    let (chat, untranslatable) = to_canonical(br#"{"model":"m","prompt":{"id":"pmpt_1"}}"#, &DEFAULT_LIMITS).unwrap();
    assert!(parse_chat_request(&chat).is_ok(), "an OpenAI-only request still has a valid canonical form");
    assert_eq!(untranslatable.unwrap().param.as_deref(), Some("prompt"));
    assert_eq!(client_param("messages[3].content"), "input");
    assert_eq!(client_param("tools[2].function.parameters"), "tools[2]");
    assert_eq!(client_param("max_completion_tokens"), "max_output_tokens");
}
