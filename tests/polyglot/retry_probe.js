// Shows the Node.js client's retry rules to the tests (test_polyglot_retry.py).
// Usage: node retry_probe.js rules
//        node retry_probe.js call <host:port> <method> <request as JSON>
// Prints one JSON object: the rules by method, or the call's status code.
"use strict";

const grpc = require("@grpc/grpc-js");
const { GatewayService, retryRules, unary } = require("./gateway");

async function call(target, method, requestJson) {
  const client = new GatewayService(target, grpc.credentials.createInsecure());
  try {
    await unary(client, method, JSON.parse(requestJson), new grpc.Metadata(), 10000);
    return { code: grpc.status.OK };
  } catch (error) {
    return { code: error.code };
  } finally {
    client.close();
  }
}

async function main() {
  const [command, ...args] = process.argv.slice(2);
  let result;
  if (command === "rules") {
    result = retryRules();
  } else if (command === "call" && args.length === 3) {
    result = await call(...args);
  } else {
    throw new Error("usage: node retry_probe.js rules | call <host:port> <method> <request json>");
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((error) => {
  process.stderr.write(`retry probe failed: ${error.stack || error}\n`);
  process.exit(1);
});
