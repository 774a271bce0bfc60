// A Node.js client of the public API that loads proto/ directly: proof that the
// contract works outside Python, retry rules included (gateway.js).
// Usage: node client.js <host:port> <api key>
// Prints one JSON object describing what it did; exits non-zero on failure.
"use strict";

const grpc = require("@grpc/grpc-js");
const { GatewayService, unary } = require("./gateway");

function readStream(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    const messages = [];
    const call = client[method](request, metadata, { deadline: Date.now() + 120000 });
    call.on("data", (message) => messages.push(message));
    call.on("error", reject);
    call.on("end", () => resolve(messages));
  });
}

async function main() {
  const [target, apiKey] = process.argv.slice(2);
  if (!target || !apiKey) {
    throw new Error("usage: node client.js <host:port> <api key>");
  }
  const client = new GatewayService(target, grpc.credentials.createInsecure());
  const auth = new grpc.Metadata();
  auth.set("authorization", `Bearer ${apiKey}`);
  const result = {};

  // Without a key the gateway refuses, with a rich status in the trailer.
  try {
    await unary(client, "ListEnvironments", {}, new grpc.Metadata());
    result.unauthenticated_code = 0;
  } catch (error) {
    result.unauthenticated_code = error.code;
    result.unauthenticated_has_details = error.metadata.get("grpc-status-details-bin").length > 0;
  }

  const models = await unary(client, "ListModels", {}, auth);
  result.models = models.models.map((m) => m.name);
  const model = result.models.includes("scripted") ? "scripted" : result.models[0];

  const created = await unary(
    client,
    "CreateEnvironment",
    { spec: { labels: { client: "node" } }, request_id: `node-${process.pid}-${Date.now()}` },
    auth,
  );
  const environmentId = created.environment.id;
  result.environment_id = environmentId;
  result.environment_state = created.environment.state;

  try {
    const experiment = await unary(
      client,
      "CreateExperiment",
      {
        environment_id: environmentId,
        spec: {
          model,
          inputs: [
            { prompt: "hello from node", expected: "hello from node" },
            { prompt: "second input", expected: "second input" },
          ],
          scorers: [{ name: "exact", exact_match: { ignore_case: true } }],
        },
        request_id: `node-experiment-${process.pid}-${Date.now()}`,
      },
      auth,
    );
    const experimentId = experiment.experiment.id;
    result.experiment_id = experimentId;

    const events = await readStream(
      client,
      "StreamExperimentEvents",
      { experiment_id: experimentId, after_sequence: 0, follow: true },
      auth,
    );
    result.event_sequences = events.map((e) => Number(e.event.sequence));
    result.event_kinds = events.map((e) => e.event.payload);
    result.states = events
      .filter((e) => e.event.payload === "state_change")
      .map((e) => e.event.state_change.state);
    result.output = events
      .filter((e) => e.event.payload === "output")
      .map((e) => e.event.output.text)
      .join("");

    const finished = await unary(client, "GetExperiment", { experiment_id: experimentId }, auth);
    result.final_state = finished.experiment.state;
  } finally {
    const deleted = await unary(client, "DeleteEnvironment", { environment_id: environmentId }, auth);
    result.deleted_state = deleted.environment.state;
    client.close();
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((error) => {
  process.stderr.write(`polyglot client failed: ${error.stack || error}\n`);
  process.exit(1);
});
