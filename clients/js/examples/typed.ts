// The client from TypeScript: types come from ppgate.d.ts ("types" in package.json).
// Checked by the tests with `tsc --noEmit --strict`; run it as JavaScript after compiling.
import { connect, JobError, type DefinedFunction, type Job } from "ppgate";

async function main(): Promise<void> {
  const node = await connect("http://127.0.0.1:8080", { token: process.env.PPGATE_TOKEN });
  const sq: DefinedFunction<[number], number> = node.define<[number], number>("def sq(x):\n    return x*x\n", "sq");
  const one: Job<number> = sq(7);
  const squares: number[] = await node.map(sq, [1, 2, 3]);
  const hyp = node.define<[number, number], number>("def hyp(a, b):\n    return sqrt(a*a + b*b)\n", "hyp",
                                                    { modules: ["from math import sqrt"], timeout: 5 });
  const five: number = await hyp.withOptions({ retries: 1 })(3, 4);
  try {
    await node.submit({ source: "def f():\n    return 1/0\n", function: "f" });
  } catch (e) {
    if (e instanceof JobError) console.log(e.type, e.remoteMessage, e.traceback, e.status);
  }
  const workers: number = await node.workers();
  const stats = await node.stats();
  console.log(await one, squares, five, workers, stats.nodes.map((n) => n.njobs));
  node.close();
}

main();
