// Runs Segment's own mapping-kit transform() on cases read from stdin.
const esbuild = require(process.env.NODE_MODULES + '/esbuild');
const code = esbuild.buildSync({ entryPoints: [process.env.SEGMENT_SRC + '/packages/core/src/mapping-kit/index.ts'], bundle: true, format: 'cjs', write: false, platform: 'node', nodePaths: [process.env.NODE_MODULES], logLevel: 'error' }).outputFiles[0].text;
const mod = { exports: {} }; new Function('module', 'exports', 'require', code)(mod, mod.exports, require);
const { transform } = mod.exports;
const fs = require('fs');
const cases = JSON.parse(fs.readFileSync(0, 'utf8'));
const out = cases.map(([mapping, payload]) => {
  try { const r = transform(mapping, payload); return r === undefined ? { absent: true } : { output: JSON.parse(JSON.stringify(r)) } }
  catch (e) { return { error: String(e.message || e).slice(0, 200) } }
});
process.stdout.write(JSON.stringify(out));
