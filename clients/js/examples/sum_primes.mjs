// pp's classic example from JavaScript: sums of primes below 100000 .. 100700, in parallel on a
// ppgate node. Start a node first (bash tools/quickstart.sh, or build/gateway/ppgate serve).
//
//   node clients/js/examples/sum_primes.mjs [http://127.0.0.1:8080]      ($PPGATE_TOKEN if it has a secret)
import { connect } from "../ppgate.mjs";

const SOURCE = `
def isprime(n):
    """Returns True if n is prime and False otherwise"""
    if n < 2:
        return False
    if n == 2:
        return True
    max = int(math.ceil(math.sqrt(n)))
    i = 2
    while i <= max:
        if n % i == 0:
            return False
        i += 1
    return True

def sum_primes(n):
    """Calculates sum of all primes below given integer n"""
    return sum([x for x in range(2, n) if isprime(x)])
`;

const node = await connect(process.argv[2] ?? "http://127.0.0.1:8080");
try {
  console.log("Starting with", await node.workers(), "workers");
  const sumPrimes = node.define(SOURCE, "sum_primes", { modules: ["math"] });
  const inputs = [100000, 100100, 100200, 100300, 100400, 100500, 100600, 100700];
  const started = performance.now();
  const sums = await node.map(sumPrimes, inputs);
  inputs.forEach((n, i) => console.log(`Sum of primes below ${n} is ${sums[i]}`));
  console.log(`Time elapsed: ${((performance.now() - started) / 1000).toFixed(3)} s`);
  console.log(await node.statsTable());
} finally {
  node.close();
}
