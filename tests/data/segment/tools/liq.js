// Renders templates with Segment's own liquid-directive.ts (liquidjs 10.27.2, Segment's limits).
const esbuild = require(process.env.NODE_MODULES + '/esbuild');
const fs = require('fs');
let src = fs.readFileSync(process.env.SEGMENT_SRC + '/packages/core/src/mapping-kit/liquid-directive.ts', 'utf8')
  .replace(/^import \{ StatsContext \}.*$/m, 'type StatsContext = any');
const js = esbuild.transformSync(src, { loader: 'ts', format: 'cjs' }).code;
const mod = { exports: {} };
new Function('module', 'exports', 'require', js)(mod, mod.exports, (n) => require(process.env.NODE_MODULES + '/' + n));
const { evaluateLiquid } = mod.exports;
const { templates, payload } = JSON.parse(fs.readFileSync(0, 'utf8'));
const out = templates.map((t) => { try { return { template: t, output: evaluateLiquid(t, payload) } } catch (e) { return { template: t, error: String(e.message).split(',')[0] } } });
process.stdout.write(JSON.stringify(out, null, 1));
