// OpenAI- and Anthropic-shaped calls from Node.js's own `https` module (its bundled or linked
// OpenSSL), against the test mock provider on 127.0.0.1:PORT. The CA comes from
// NODE_EXTRA_CA_CERTS; the TLS name and Host header are the real providers'.
//
// Usage: node node_llm_client.js PORT TAG
// TAG goes into every model name (as a base-model token), so the test finds its own series.
// The calls start after one line is read from stdin (the test sends it once tokentap has
// hooked this process).
// Prints one JSON report line: {pid, node, openssl, calls: [{provider, model, stream, status,
// input, output}]} with the tokens this client itself parsed from the answers (null when the
// answer had none), then keeps its idle keep-alive connections open until stdin closes.
'use strict';
const https = require('https');

const port = Number(process.argv[2]);
const tag = process.argv[3];
const KEY = 'sk-tokentap-test-not-a-real-key';
const HOSTS = { openai: 'api.openai.com', anthropic: 'api.anthropic.com' };
const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });

function post(provider, path, payload) {
  const body = JSON.stringify(payload);
  const headers = {
    host: HOSTS[provider],
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  };
  if (provider === 'openai') headers.authorization = `Bearer ${KEY}`;
  else {
    headers['x-api-key'] = KEY;
    headers['anthropic-version'] = '2023-06-01';
  }
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port, servername: HOSTS[provider], path, method: 'POST', agent, headers },
      (res) => {
        const parts = [];
        res.on('data', (d) => parts.push(d));
        res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(parts).toString() }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

function sseData(text) {
  return text
    .split(/\r?\n/)
    .filter((l) => l.startsWith('data:'))
    .map((l) => l.slice(5).trim())
    .filter((d) => d && d !== '[DONE]')
    .map((d) => JSON.parse(d));
}

// Tokens as the metrics count them: input includes cached tokens.
function usage(provider, stream, status, text) {
  if (status !== 200) return { input: null, output: null };
  if (provider === 'openai') {
    const u = stream ? sseData(text).map((e) => e.usage).filter(Boolean).pop() : JSON.parse(text).usage;
    return u ? { input: u.prompt_tokens, output: u.completion_tokens } : { input: null, output: null };
  }
  const anth = (u) => (u.input_tokens || 0) + (u.cache_read_input_tokens || 0) + (u.cache_creation_input_tokens || 0);
  if (!stream) {
    const u = JSON.parse(text).usage;
    return { input: anth(u), output: u.output_tokens };
  }
  let input = null;
  let output = null;
  for (const e of sseData(text)) {
    if (e.type === 'message_start') input = anth(e.message.usage);
    if (e.type === 'message_delta') output = e.usage.output_tokens;
  }
  return { input, output };
}

function firstLine() {
  return new Promise((resolve) => {
    let seen = '';
    const onData = (d) => {
      seen += d;
      if (seen.includes('\n')) {
        process.stdin.off('data', onData);
        process.stdin.pause();
        resolve();
      }
    };
    process.stdin.on('data', onData);
  });
}

async function main() {
  process.stdout.write(JSON.stringify({ pid: process.pid }) + '\n');
  await firstLine();
  const big = 'lorem ipsum '.repeat(20000); // a 240 KB request body: many TLS records
  const calls = [
    ['openai', '/v1/chat/completions', `gpt-4o-mini-${tag}-chunks4`, false, 'Say hello from Node.'],
    ['openai', '/v1/chat/completions', `gpt-4o-mini-${tag}-chunks6`, true, 'Stream a greeting.'],
    ['openai', '/v1/chat/completions', `gpt-4o-mini-${tag}big-chunks2`, false, big],
    ['anthropic', '/v1/messages', `claude-sonnet-4-5-${tag}-chunks3`, false, 'Hello, Claude.'],
    ['anthropic', '/v1/messages', `claude-sonnet-4-5-${tag}-chunks5`, true, 'Stream to me.'],
    ['openai', '/v1/chat/completions', `gpt-4o-mini-${tag}-err429`, false, 'Too many.'],
  ];
  const report = { pid: process.pid, node: process.version, openssl: process.versions.openssl, calls: [] };
  for (const [provider, path, model, stream, content] of calls) {
    const payload =
      provider === 'openai'
        ? { model, messages: [{ role: 'user', content }], stream, ...(stream ? { stream_options: { include_usage: true } } : {}) }
        : { model, max_tokens: 64, messages: [{ role: 'user', content }], stream };
    const { status, text } = await post(provider, path, payload);
    report.calls.push({ provider, model, stream, status, ...usage(provider, stream, status, text) });
  }
  process.stdout.write(JSON.stringify(report) + '\n');
  process.stdin.resume();
  process.stdin.on('end', () => {
    agent.destroy();
    process.exit(0);
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
