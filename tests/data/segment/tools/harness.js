// Runs an upstream jest test file with stubs that record each call and its expectation.
const fs = require('fs'); const path = require('path'); const vm = require('vm');
const esbuild = require(process.env.NODE_MODULES + '/esbuild');
const file = process.argv[2];
let src = fs.readFileSync(file, 'utf8');
src = src.replace(/^import .*$/mg, '');
const js = esbuild.transformSync(src, { loader: 'ts', format: 'cjs' }).code;
const cases = []; const names = []; let current = null; let active = null;
function record(fn, args) {
  const c = { name: [...names, current].filter(Boolean).join(' / '), fn, args: JSON.parse(JSON.stringify(args.map(a => a === undefined ? '__undefined__' : a))) };
  cases.push(c); if (active) active.push(c);
  return { __marker: c };
}
const stubs = {
  transform: (...a) => record('transform', a),
  render: (...a) => record('render', a),
  flattenObject: (...a) => record('flattenObject', a),
  getFieldValueKeys: (...a) => record('getFieldValueKeys', a),
};
function expect(x) {
  const m = {
    toStrictEqual: v => set(x, { output: v === undefined ? '__undefined__' : v }),
    toEqual: v => set(x, { output: v === undefined ? '__undefined__' : v }),
    toBe: v => set(x, { output: v }),
    toThrow: e => thrown(x, e), toThrowError: e => thrown(x, e),
    toMatch: () => {}, toBeDefined: () => {}, toBeTruthy: () => {}, toContain: () => {},
    not: { toThrow: () => thrown(x, undefined, true), toThrowError: () => thrown(x, undefined, true) },
  };
  return m;
}
expect.arrayContaining = v => ({ arrayContaining: v });
expect.objectContaining = v => v;
function set(x, exp) { if (x && x.__marker) Object.assign(x.__marker, { expect: exp }); else console.error('unmarked', current); }
function thrown(f, e, not) {
  active = []; try { f() } catch (err) { console.error('harness error', err) } const got = active; active = null;
  let msg = null;
  if (typeof e === 'string') msg = e; else if (e instanceof RegExp) msg = 're:' + e.source; else if (e instanceof Error) msg = e.message;
  for (const c of got) {
    if (not) c.expect = { raises: false };
    else if (!c.expect || !c.expect.raises || !c.expect.message) c.expect = { raises: true, message: msg };
  }
}
const ctx = { ...stubs, expect, console, JSON, RegExp, Error, Object, Array, String,
  describe: (n, f) => { names.push(n); f(); names.pop() },
  test: (n, f) => { current = n; f(); current = null }, };
ctx.it = ctx.test;
vm.createContext(ctx); vm.runInContext(js, ctx);
// merge duplicates (the same call asserted twice)
const out = []; const seen = new Map();
for (const c of cases) { const k = c.fn + JSON.stringify(c.args);
  if (seen.has(k)) { const p = seen.get(k); if (c.expect && c.expect.message) p.expect = c.expect; continue }
  seen.set(k, c); out.push(c) }
process.stdout.write(JSON.stringify(out, null, 1));
