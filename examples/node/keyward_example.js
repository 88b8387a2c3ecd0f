#!/usr/bin/env node
// Wrap and unwrap a secret through keywardd from Node.js, and read keyward's
// error reason from a refused call.
//
//   cd examples/node && npm ci --ignore-scripts && node keyward_example.js [KEY]
//
// @grpc/proto-loader reads api/keyward/v1/keyward.proto at run time (no
// generated code), protobufjs examples/proto/rpc_status.proto. The socket is
// $KEYWARD_SOCKET, else /run/keyward/keyward.sock. The caller needs no
// token: keywardd authorises the uid, gid and unit the kernel reports for
// this process. The key (default examples/node) is created when missing,
// which needs the key.create operation.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const DEFAULT_SOCKET = '/run/keyward/keyward.sock';
const ERROR_DOMAIN = 'keyward.dev';
const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';

const root = path.join(__dirname, '..', '..');
const apiDir = path.join(root, 'api');
const statusProto = path.join(root, 'examples', 'proto', 'rpc_status.proto');

// Status and ErrorInfo have google.rpc's layout (see rpc_status.proto);
// protobufjs knows google/protobuf/any.proto already.
const rpc = new protobuf.Root().loadSync(statusProto, { keepCase: true });
const Status = rpc.lookupType('keyward.examples.rpc.Status');
const ErrorInfo = rpc.lookupType('keyward.examples.rpc.ErrorInfo');

// keywardReason returns the keyward reason (e.g. "KEY_NOT_FOUND") of a
// failed call, or null when the error does not come from keywardd.
function keywardReason(err) {
  const raw = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  for (const bin of raw) {
    const status = Status.decode(bin);
    for (const detail of status.details) {
      if (detail.type_url !== ERROR_INFO_TYPE) continue;
      const info = ErrorInfo.decode(detail.value);
      if (info.domain === ERROR_DOMAIN) return info.reason;
    }
  }
  return null;
}

function client(socketPath) {
  const def = protoLoader.loadSync('keyward/v1/keyward.proto', {
    includeDirs: [apiDir],
    keepCase: true, // field names as in the .proto: key_type, not keyType
    longs: String,
    enums: String,
    defaults: true,
  });
  const { Keyward } = grpc.loadPackageDefinition(def).keyward.v1;
  // No credentials: the daemon reads the caller's identity from the socket.
  return new Keyward('unix:' + path.resolve(socketPath), grpc.credentials.createInsecure());
}

// call makes a unary call as a promise, with a 10 s deadline.
function call(api, method, request) {
  return new Promise((resolve, reject) => {
    api[method](request, { deadline: Date.now() + 10000 }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

async function refused(what, promise) {
  try {
    await promise;
  } catch (err) {
    console.log(`${what}: ${grpc.status[err.code]}, reason ${keywardReason(err)}`);
    return;
  }
  throw new Error(`${what} succeeded`);
}

async function main() {
  const key = process.argv[2] || 'examples/node';
  const api = client(process.env.KEYWARD_SOCKET || DEFAULT_SOCKET);
  try {
    try {
      await call(api, 'CreateKey', { key, key_type: 'aes-256-gcm' });
      console.log('created key', key);
    } catch (err) {
      if (keywardReason(err) !== 'KEY_EXISTS') throw err;
      console.log('key', key, 'exists');
    }

    const secret = Buffer.from('s3cr3t-api-token');
    const context = { app: 'example', lang: 'node' };
    const wrapped = await call(api, 'Wrap', { key, plaintext: secret, context });
    console.log(`wrapped with ${wrapped.key} version ${wrapped.version}: ${wrapped.ciphertext.length} bytes`);

    const opened = await call(api, 'Unwrap', { ciphertext: wrapped.ciphertext, context });
    if (!opened.plaintext.equals(secret)) throw new Error('unwrap returned other bytes than were wrapped');
    console.log(`unwrapped: the same ${opened.plaintext.length} bytes`);
    secret.fill(0);
    opened.plaintext.fill(0);

    // The context is bound into the blob: another one is refused, and the
    // reason says why.
    await refused('unwrap with another context', call(api, 'Unwrap', { ciphertext: wrapped.ciphertext, context: { app: 'other' } }));
    await refused('describe a missing key', call(api, 'DescribeKey', { key: key + '-missing' }));
  } finally {
    api.close();
  }
}

main().catch((err) => {
  const reason = keywardReason(err);
  console.error(`keyward_example: ${err.message}${reason ? ` (reason ${reason})` : ''}`);
  process.exit(1);
});
