#!/usr/bin/env node
// An agent's tool loop through faregate from Node, with @grpc/grpc-js and
// @grpc/proto-loader reading protos/ at run time: no generated code.
//
//   NODE_PATH=.tools/node_modules node tests/node/tool_loop.js TARGET [BUDGET_KEY [MODEL]]
//
// TARGET is host:port; BUDGET_KEY defaults to "demo" and MODEL to the
// default route, which is what `make run` serves. The loop runs twice, once
// over Route and once over StreamRoute: it offers one tool, runs each call
// the model makes and sends the result back as a ROLE_TOOL turn, until the
// model answers in text. A streamed turn's tool-call fragments are put
// together here and checked against the calls StreamFinish assembled.
//
// It prints one JSON object, every turn of both loops, on stdout, and exits
// non-zero on any gRPC error or broken expectation (the message on stderr).
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '../../protos');
const DEADLINE_MS = 10_000; // per call
const MAX_TURNS = 4; // a model that keeps calling tools is an error here

const definition = protoLoader.loadSync('faregate/v1/router.proto', {
  includeDirs: [PROTOS],
  // Field names as the proto spells them (tool_calls, tool_call_id,
  // arguments_json): what its comments, the Python client and the other
  // languages' stubs say, so the proto is this script's documentation.
  keepCase: true,
  longs: String, // int64 nano-USD as decimal text: no rounding through a double
  enums: String, // FINISH_REASON_TOOL_CALLS rather than 4
  defaults: true, // an unset field reads as its zero value, as in proto3
  oneofs: true, // an event's `event` field names its kind: start, delta or finish
});
const { RouterService } = grpc.loadPackageDefinition(definition).faregate.v1;

// The one tool offered, and what running it answers.
const SEARCH = {
  name: 'search',
  description: "Searches faregate's documentation.",
  parameters_json: JSON.stringify({
    type: 'object',
    properties: { query: { type: 'string' } },
    required: ['query'],
  }),
};

function runTool(call) {
  if (call.name !== SEARCH.name) throw new Error(`the model called an unknown tool: ${call.name}`);
  const { query } = JSON.parse(call.arguments_json); // models can get it wrong: parse first
  return JSON.stringify({ query, result: 'faregate is a gRPC gateway between agents and models.' });
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function route(client, request) {
  return new Promise((resolve, reject) => {
    client.Route(request, { deadline: deadline() }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// One StreamRoute turn: the text, the tool calls its fragments make up, and
// the finish. Fragments of parallel calls may interleave, told apart by index.
async function streamRoute(client, request) {
  const call = client.StreamRoute(request, { deadline: deadline() });
  let text = '';
  let fragments = 0;
  const assembled = [];
  let start = null;
  let finish = null;
  for await (const event of call) {
    if (event.event === 'start') start = event.start;
    else if (event.event === 'finish') finish = event.finish;
    else if (event.delta.tool_call) {
      const piece = event.delta.tool_call;
      fragments += 1;
      assembled[piece.index] ??= { id: '', name: '', arguments_json: '' };
      const whole = assembled[piece.index];
      whole.id ||= piece.id;
      whole.name ||= piece.name;
      whole.arguments_json += piece.arguments_json;
    } else text += event.delta.text;
  }
  if (start === null || finish === null) throw new Error('a stream ended without start or finish');
  const finished = finish.tool_calls.map(({ id, name, arguments_json }) => ({ id, name, arguments_json }));
  if (JSON.stringify(finished) !== JSON.stringify(assembled)) {
    throw new Error(`StreamFinish.tool_calls ${JSON.stringify(finished)} are not the fragments' ${JSON.stringify(assembled)}`);
  }
  return { model_used: start.model_used, output: text, fragments, ...finish };
}

// Asks `ask` turn after turn, answering each tool call, until a text answer.
async function toolLoop(ask, budgetKey, model) {
  const messages = [{ role: 'ROLE_USER', content: 'What is faregate?' }];
  const turns = [];
  while (turns.length < MAX_TURNS) {
    const answer = await ask({ model, budget_key: budgetKey, messages, tools: [SEARCH] });
    turns.push({
      model_used: answer.model_used,
      finish_reason: answer.finish_reason,
      output: answer.output,
      tool_calls: answer.tool_calls,
      cost_nano_usd: answer.cost_nano_usd,
      ...(answer.fragments === undefined ? {} : { tool_call_fragments: answer.fragments }),
    });
    if (answer.finish_reason !== 'FINISH_REASON_TOOL_CALLS') return turns;
    // The assistant's turn goes back as it came, reasoning included (Anthropic
    // requires its thinking blocks on a tool turn), then one result per call.
    messages.push({
      role: 'ROLE_ASSISTANT',
      content: answer.output,
      tool_calls: answer.tool_calls,
      reasoning: answer.reasoning,
    });
    for (const call of answer.tool_calls) {
      messages.push({ role: 'ROLE_TOOL', tool_call_id: call.id, content: runTool(call) });
    }
  }
  throw new Error(`no text answer after ${MAX_TURNS} turns`);
}

async function main() {
  const [target, budgetKey = 'demo', model = ''] = process.argv.slice(2);
  if (!target) throw new Error('usage: tool_loop.js TARGET [BUDGET_KEY [MODEL]]');
  const client = new RouterService(target, grpc.credentials.createInsecure());
  try {
    const whole = await toolLoop((request) => route(client, request), budgetKey, model);
    const streamed = await toolLoop((request) => streamRoute(client, request), budgetKey, model);
    process.stdout.write(`${JSON.stringify({ route: whole, stream_route: streamed })}\n`);
  } finally {
    client.close();
  }
}

main().catch((error) => {
  // A gRPC error's message names its status code and details.
  process.stderr.write(`tool_loop: ${error.message}\n`);
  process.exit(1);
});
