// The official `ollama` JavaScript client (npm) against a running DX serving SmolLM2.
// Run by tests/integration/test_js_client.py, which starts DX and sets DX_URL and DX_KEY:
//   node --test tests/js/ollama_client.test.mjs
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { Ollama } from 'ollama'

const ollama = new Ollama({
  host: process.env.DX_URL,
  headers: { Authorization: `Bearer ${process.env.DX_KEY}` },
})
const question = [{ role: 'user', content: 'What is the capital of France?' }]
const greedy = { temperature: 0, seed: 1, num_predict: 24 }
const weatherTool = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Get the current weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
}

function checkFinal(final) {
  assert.equal(final.done, true)
  assert.ok(['stop', 'length'].includes(final.done_reason))
  assert.ok(final.prompt_eval_count > 5, 'the engine counted the prompt')
  assert.ok(final.eval_count > 0 && final.eval_count <= 24)
  assert.ok(final.total_duration > final.eval_duration)
  assert.ok(!Number.isNaN(Date.parse(final.created_at)))
}

test('list and version', async () => {
  const { models } = await ollama.list()
  assert.ok(models.some((m) => m.model === 'smollm2:latest' && m.name === 'smollm2:latest'))
  const { version } = await ollama.version()
  assert.match(version, /^\d+\.\d+\.\d+$/)
})

test('show', async () => {
  const shown = await ollama.show({ model: 'smollm2' })
  assert.equal(shown.model_info['llama.context_length'], 2048)
  assert.equal(shown.details.quantization_level, 'Q4_1')
  assert.deepEqual(shown.capabilities, ['completion'])
  assert.ok(shown.template.includes('<|im_start|>'))
})

test('ps', async () => {
  const { models } = await ollama.ps()
  const smol = models.find((m) => m.model === 'smollm2:latest')
  assert.ok(smol && smol.size_vram === 0 && smol.context_length === 2048)
  assert.ok(new Date(smol.expires_at).getFullYear() > 2200)
})

test('chat, one reply and streamed', async () => {
  const one = await ollama.chat({ model: 'smollm2', messages: question, options: greedy })
  checkFinal(one)
  assert.ok(one.message.content.trim())
  const stream = await ollama.chat({ model: 'smollm2', messages: question, options: greedy, stream: true })
  let text = ''
  let final
  for await (const part of stream) {
    text += part.message.content
    final = part
  }
  assert.equal(text, one.message.content)
  checkFinal(final)
  assert.equal(final.prompt_eval_count, one.prompt_eval_count)
})

test('generate, one reply and streamed', async () => {
  const one = await ollama.generate({ model: 'smollm2', prompt: 'The capital of France is', raw: true,
    options: { temperature: 0, num_predict: 8 } })
  assert.ok(one.response.includes('Paris'))
  assert.equal(one.eval_count, 8)
  const stream = await ollama.generate({ model: 'smollm2', prompt: 'What is the capital of France?',
    options: greedy, stream: true })
  let text = ''
  for await (const part of stream) text += part.response
  assert.ok(text.trim())
})

test('embed', async () => {
  const reply = await ollama.embed({ model: 'smollm2-embed', input: ['The sky is blue.', 'Paris'] })
  assert.equal(reply.embeddings.length, 2)
  assert.equal(reply.embeddings[0].length, 576)
  const norm = Math.sqrt(reply.embeddings[0].reduce((s, x) => s + x * x, 0))
  assert.ok(Math.abs(norm - 1) < 1e-6)
})

test('keep_alive load and unload', async () => {
  const load = await ollama.generate({ model: 'smollm2', prompt: '', keep_alive: '5m' })
  assert.equal(load.done_reason, 'load')
  const unload = await ollama.generate({ model: 'smollm2', prompt: '', keep_alive: 0 })
  assert.equal(unload.done_reason, 'unload')
})

test('tools', async () => {
  const messages = [{ role: 'user', content: 'What is the weather in Paris?' }]
  const plain = await ollama.chat({ model: 'smollm2-tools', messages, options: greedy })
  const withTool = await ollama.chat({ model: 'smollm2-tools', messages, options: greedy, tools: [weatherTool] })
  assert.ok(withTool.prompt_eval_count > plain.prompt_eval_count + 50, 'the tool is in the prompt')
  for (const call of withTool.message.tool_calls ?? []) assert.equal(typeof call.function.arguments, 'object')
  await assert.rejects(
    ollama.chat({ model: 'smollm2', messages, tools: [weatherTool] }),
    (err) => err.status_code === 400 && /does not support tools/.test(err.error),
  )
})

test('format: JSON schema', async () => {
  const schema = {
    type: 'object',
    properties: { capital: { type: 'string', maxLength: 20 }, population: { type: 'integer' } },
    required: ['capital', 'population'],
    additionalProperties: false,
  }
  const reply = await ollama.chat({
    model: 'smollm2',
    messages: [{ role: 'user', content: 'What is the capital of France? Answer as JSON.' }],
    format: schema,
    options: { temperature: 0, num_predict: 128, repeat_last_n: 128, repeat_penalty: 1.5 },
  })
  const data = JSON.parse(reply.message.content)
  assert.deepEqual(Object.keys(data).sort(), ['capital', 'population'])
  assert.equal(typeof data.capital, 'string')
  assert.ok(Number.isInteger(data.population))
})

test('errors are ResponseErrors with the message', async () => {
  await assert.rejects(
    ollama.chat({ model: 'llama3', messages: question }),
    (err) => err.status_code === 404 && /smollm2:latest/.test(err.error),
  )
  await assert.rejects(ollama.pull({ model: 'llama3.2' }), (err) => /models:/.test(err.error))
})
