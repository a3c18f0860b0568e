const fs = require('fs'); const vm = require('vm');
const esbuild = require(process.env.NODE_MODULES + '/esbuild');
const S = process.env.SEGMENT_SRC + '/packages/destination-subscriptions/src';
// Segment's own parser, generator and evaluator
const lib = esbuild.buildSync({ entryPoints: [S + '/index.ts'], bundle: true, format: 'cjs', write: false, platform: 'node', nodePaths: [process.env.NODE_MODULES] }).outputFiles[0].text;
const mod = { exports: {} }; new Function('module', 'exports', 'require', lib)(mod, mod.exports, require);
const { parseFql, generateFql, validate } = mod.exports;
module.exports = { parseFql, generateFql, validate };
if (require.main === module) {
  for (const f of process.argv.slice(2)) console.log(f, JSON.stringify(parseFql(f)));
}
