import fs from 'node:fs';
import path from 'node:path';
import ts from 'typescript';

/**
 * Transpiles a source module and every module it imports relatively into
 * `outDir` (same layout, ES modules), so a child `node` process can run the
 * real code: tests that need several processes (concurrent journal appends).
 * Returns the path of the entry's `.js` file.
 */
export function transpileClosure(entry: string, srcRoot: string, outDir: string): string {
  const done = new Set<string>();
  const visit = (file: string): void => {
    if (done.has(file)) return;
    done.add(file);
    const source = fs.readFileSync(file, 'utf8');
    const out = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 } }).outputText;
    const target = path.join(outDir, path.relative(srcRoot, file)).replace(/\.ts$/, '.js');
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, out);
    for (const match of source.matchAll(/from '(\.{1,2}\/[^']+)\.js'/g)) visit(path.resolve(path.dirname(file), `${match[1]}.ts`));
  };
  visit(entry);
  fs.writeFileSync(path.join(outDir, 'package.json'), '{"type":"module"}\n');
  return path.join(outDir, path.relative(srcRoot, entry)).replace(/\.ts$/, '.js');
}
