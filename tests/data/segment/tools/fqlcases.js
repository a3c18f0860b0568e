const fs = require('fs'); const vm = require('vm');
const esbuild = require(process.env.NODE_MODULES + '/esbuild');
const { parseFql, generateFql, validate } = require('./fqlx.js');
const T = process.env.SEGMENT_SRC + '/packages/destination-subscriptions/src/__tests__/';
function run(file, stubs) {
  let src = fs.readFileSync(T + file, 'utf8').replace(/^import .*$/mg, '');
  const js = esbuild.transformSync(src, { loader: 'ts', format: 'cjs' }).code;
  const calls = []; let current = null;
  const ctx = { console, JSON, Error, Object, Array, String, Number, RegExp,
    test: (n, f) => { current = n; f() }, describe: (n, f) => f(), };
  for (const [k, fn] of Object.entries(stubs)) ctx[k] = (...a) => { const c = { name: current, fn: k, args: a }; calls.push(c); return { __m: c } };
  const expect = (x) => ({ toEqual: v => { if (x && x.__m) x.__m.expect = v }, toMatchObject: v => { if (x && x.__m) x.__m.expect = v } });
  expect.objectContaining = v => ({ objectContaining: v });
  ctx.expect = expect; ctx.it = ctx.test;
  vm.createContext(ctx); vm.runInContext(js, ctx);
  return calls;
}
const strip = (o) => JSON.parse(JSON.stringify(o));
// Probe messages: for each leaf, the field set to variants of the condition's value.
const prefix = { 'event-type': ['type'], event: ['event'], name: ['name'], userId: ['userId'], 'event-property': ['properties'], 'event-trait': ['traits'], 'event-context': ['context'] };
function leaves(n) { return n.type === 'group' ? n.children.flatMap(leaves) : [n] }
function setPath(msg, leaf, value) {
  const parts = [...prefix[leaf.type], ...(leaf.name ? leaf.name.match(/([^[.\]])+/g) : [])];
  let o = msg; for (const p of parts.slice(0, -1)) { if (typeof o[p] !== 'object' || o[p] === null) o[p] = {}; o = o[p] }
  if (value === undefined) delete o[parts.at(-1)]; else o[parts.at(-1)] = value;
}
function variants(leaf) {
  const v = leaf.value; const out = [v, String(v), v + 'x', 'x' + v, true, false, null, undefined, 7, 'other'];
  if (v !== undefined && !isNaN(Number(v))) out.push(Number(v), Number(v) + 1, Number(v) - 1);
  return out;
}
function probes(ast) {
  const ls = leaves(ast); const msgs = [];
  const n = Math.max(...ls.map(l => variants(l).length));
  for (let k = 0; k < n; k++) { const m = { type: 'track', event: 'E' };
    ls.forEach((l, i) => { const vs = variants(l); setPath(m, l, vs[(k + i) % vs.length]) }); msgs.push(strip(m)) }
  for (let k = 0; k < n; k++) { const m = { type: 'track', event: 'E' };
    ls.forEach((l) => { const vs = variants(l); setPath(m, l, vs[k % vs.length]) }); msgs.push(strip(m)) }
  const uniq = [...new Set(msgs.map(m => JSON.stringify(m)))].map(s => JSON.parse(s));
  return uniq.map(m => ({ message: m, matches: validate(parseFql(...[generateFql(ast)]), m) }));
}
const result = { evaluate: [], parse: [], not_applicable: [] };
// validate.test.ts: an AST, a message, the answer
for (const c of run('validate.test.ts', { originalValidate: 0 })) {
  const [ast, data] = c.args;
  const where = { upstream: 'validate.test.ts', name: c.name };
  if (ast.error) { result.not_applicable.push({ ...where, ast: String(ast.error), reason: 'an AST holding a parse error: cdpd rejects a subscription that does not parse when the config is loaded' }); continue }
  if (typeof data !== 'object' || data === null) { result.not_applicable.push({ ...where, ast, message: data === undefined ? '(undefined)' : data, reason: 'the message is not an object: cdpd only routes decoded message objects' }); continue }
  let fql; try { fql = generateFql(ast) } catch (e) { result.not_applicable.push({ ...where, ast, reason: 'no FQL text for this AST: ' + e.message }); continue }
  const back = parseFql(fql);
  const norm = (a) => JSON.stringify(a, (k, v) => (k === 'value' && v !== undefined) ? String(v) : (v && v.type === 'group' && v.children.length === 1) ? { ...v, operator: 'and' } : v);
  if (norm(back) !== norm(ast)) { result.not_applicable.push({ ...where, ast, message: data, fql, reason: `this AST cannot be written in FQL: ${fql} parses to a different condition (${back.children ? back.children.map(x => x.operator).join(', ') : 'error'})` }); continue }
  result.evaluate.push({ ...where, fql, message: data, matches: c.expect });
}
// fql.test.ts: FQL text and the AST Segment parses it to; generate-fql.test.ts: an AST and its FQL text
for (const c of run('fql.test.ts', { parseFql: 0, generateFql: 0 }).filter(c => c.fn === 'parseFql')) {
  const fql = c.args[0]; const ast = parseFql(fql);
  const where = { upstream: 'fql.test.ts', name: c.name, fql };
  if (ast.error) { result.parse.push({ ...where, parses: false, segment_error: String(ast.error) }); continue }
  if (fql.trim() === 'type =') { result.not_applicable.push({ ...where, reason: 'Segment\'s parser reads a missing value as the string "eos" (its end-of-input token); cdpd rejects the subscription at config load' }); continue }
  result.parse.push({ ...where, parses: true, probes: probes(ast) });
}
for (const c of run('generate-fql.test.ts', { generateFql: 0 })) {
  const where = { upstream: 'generate-fql.test.ts', name: c.name };
  const ast = c.args[0];
  if (ast.error) { result.not_applicable.push({ ...where, reason: 'generating FQL from an AST holding an error: cdpd has no AST-to-FQL generator' }); continue }
  const fql = c.expect; const back = parseFql(fql);
  result.parse.push({ ...where, fql, parses: true, probes: probes(back) });
}
process.stdout.write(JSON.stringify(result, null, 1));
