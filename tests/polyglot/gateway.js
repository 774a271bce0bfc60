// The public API as proto/ declares it: the GatewayService client class, and
// which calls may be repeated, read from the contract's method options
// (protobuf's standard idempotency_level, and sandbox.v1.rules for creates
// that a request_id makes safe to repeat) rather than from a list kept here.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");
const SERVICE = "sandbox.v1.GatewayService";
const RULES_OPTION = "(sandbox.v1.rules)";
const RETRY_DELAY_MS = 100;

const definition = protoLoader.loadSync("sandbox/v1/gateway_service.proto", {
  includeDirs: [PROTO_ROOT],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const GatewayService = grpc.loadPackageDefinition(definition).sandbox.v1.GatewayService;

// What the contract says about repeating each method, by method name.
function retryRules() {
  const rules = {};
  for (const [name, method] of Object.entries(definition[SERVICE])) {
    const options = method.options;
    rules[name] = {
      idempotency_level: options.idempotency_level,
      idempotent_by_request_id: Boolean((options[RULES_OPTION] || {}).idempotent_by_request_id),
    };
  }
  return rules;
}

const RULES = retryRules();

// Whether sending this request again cannot do the work twice: the method is
// idempotent, or the server answers a repeated request_id with the first result.
function retrySafe(method, request) {
  const rule = RULES[method];
  if (rule.idempotency_level !== protoLoader.IdempotencyLevel.IDEMPOTENCY_UNKNOWN) {
    return true;
  }
  return rule.idempotent_by_request_id && Boolean(request.request_id);
}

function callOnce(client, method, request, metadata, timeoutMs) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + timeoutMs }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// A unary call, sent once more after UNAVAILABLE (the gateway could not be
// reached, or its connection broke) when the contract says a repeat is safe.
async function unary(client, method, request, metadata, timeoutMs = 60000) {
  try {
    return await callOnce(client, method, request, metadata, timeoutMs);
  } catch (error) {
    if (error.code !== grpc.status.UNAVAILABLE || !retrySafe(method, request)) {
      throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, RETRY_DELAY_MS));
    return callOnce(client, method, request, metadata, timeoutMs);
  }
}

module.exports = { GatewayService, retryRules, retrySafe, unary };
