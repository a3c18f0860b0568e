const { parseFql, validate } = require('./fqlx.js');
const fs = require('fs');
const { cases } = JSON.parse(fs.readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(cases.map(([fql, messages]) => { const ast = parseFql(fql); return { error: !!ast.error, answers: messages.map(m => { try { return validate(ast, m) } catch (e) { return 'throw' } }) } })));
