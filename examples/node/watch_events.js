#!/usr/bin/env node
// Example event watcher (@grpc/grpc-js + @grpc/proto-loader) of lending-grpc: follows the
// loan event log with EventService.WatchEvents and prints each event as one line of JSON.
//
// Usage: node watch_events.js HOST:PORT USERNAME [--after N] [--loan LOAN_ID] [--count N]
//        (the password is read from the first line of standard input)
//
// It starts after sequence N (default 0: the whole log), prints the backlog, then every new
// event as it commits. When the stream ends with UNAVAILABLE (the server shut down, the
// connection dropped) it reconnects with exponential backoff and resumes after the last event
// it printed; when it ends with UNAUTHENTICATED (the access token expired) it renews the token
// and resumes at once. So each event is printed exactly once, in sequence order. It stops after
// --count events (exit 0), on Ctrl-C (exit 0), or on any other error (exit 1).
'use strict';

const path = require('node:path');
const readline = require('node:readline');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILES = ['lending/v1/auth.proto', 'lending/v1/events.proto'];
const DEADLINE_MS = 10000;
const INITIAL_BACKOFF_MS = 200;
const MAX_BACKOFF_MS = 5000;
// A stream refused again this soon after a renewal means the credentials are no good.
const MIN_TOKEN_LIFE_MS = 500;
// grpc-js waits up to 120 s between attempts to reach a server that went away; 5 s finds a
// restarted server within seconds.
const CHANNEL_OPTIONS = { 'grpc.max_reconnect_backoff_ms': 5000 };

function usage(message) {
  if (message) console.error(`watch_events.js: ${message}`);
  console.error('usage: node watch_events.js HOST:PORT USERNAME [--after N] [--loan LOAN_ID] [--count N]');
  process.exit(2);
}

function parseArgs(argv) {
  const [target, username, ...rest] = argv;
  if (!target || !username) usage();
  const options = { target, username, after: 0n, loanId: '', count: 0 };
  for (let i = 0; i < rest.length; i += 2) {
    const [flag, value] = [rest[i], rest[i + 1]];
    if (value === undefined) usage(`${flag} needs a value`);
    if (flag === '--after' && /^\d+$/.test(value)) options.after = BigInt(value);
    else if (flag === '--count' && /^[1-9]\d*$/.test(value)) options.count = Number(value);
    else if (flag === '--loan') options.loanId = value;
    else usage(`unexpected ${flag} ${value}`);
  }
  return options;
}

function readPassword() {
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: process.stdin });
    lines.once('line', (line) => {
      resolve(line); // before close(), whose 'close' event would otherwise reject first
      lines.close();
    });
    lines.once('close', () => reject(new Error('no password on standard input')));
  });
}

function loadServices() {
  const definition = protoLoader.loadSync(PROTO_FILES, {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    enums: String,
    longs: String, // int64 sequences arrive as decimal strings: compare them as BigInt
    defaults: true,
    oneofs: true, // event.resource names the member that is set: 'loan', 'payment' or 'delinquency'
  });
  const lending = grpc.loadPackageDefinition(definition).lending.v1;
  return { AuthService: lending.AuthService, EventService: lending.EventService };
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, new grpc.Metadata(), { deadline }, (err, response) => {
      if (err) reject(err);
      else resolve(response);
    });
  });
}

class Session {
  constructor(auth, username, password) {
    Object.assign(this, { auth, username, password, tokens: null });
  }

  async logIn() {
    this.tokens = await unary(this.auth, 'Login', { username: this.username, password: this.password });
  }

  // After a rejection: swap the refresh token for a new pair, or log in again if that fails too.
  async renew() {
    try {
      this.tokens = await unary(this.auth, 'RefreshToken', { refresh_token: this.tokens.refresh_token });
    } catch (err) {
      if (err.code !== grpc.status.UNAUTHENTICATED) throw err;
      await this.logIn();
    }
  }

  metadata() {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${this.tokens.access_token}`);
    return md;
  }
}

// One stream: resolves with its final status ({code, details}); calls onEvent for each event.
function watchOnce(events, session, request, onEvent, state) {
  return new Promise((resolve) => {
    const call = events.WatchEvents(request, session.metadata());
    state.call = call;
    call.on('data', onEvent);
    call.on('error', () => {}); // the status below says the same; without a listener it would throw
    call.on('status', (status) => resolve({ code: status.code, details: status.details }));
  });
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const password = await readPassword();
  const { AuthService, EventService } = loadServices();
  const credentials = grpc.credentials.createInsecure();
  const auth = new AuthService(options.target, credentials, CHANNEL_OPTIONS);
  const events = new EventService(options.target, credentials, CHANNEL_OPTIONS);
  const session = new Session(auth, options.username, password);
  const state = { call: null, stopping: false, wake: () => {} };
  let last = options.after;
  let printed = 0;

  const stop = () => {
    state.stopping = true;
    if (state.call) state.call.cancel();
    state.wake();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const pause = (ms) =>
    new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      state.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  const onEvent = (event) => {
    const sequence = BigInt(event.sequence);
    if (sequence <= last || state.stopping) return; // never print an event twice
    last = sequence;
    backoff = INITIAL_BACKOFF_MS;
    renewedAt = null;
    console.log(JSON.stringify(event));
    printed += 1;
    if (options.count && printed >= options.count) stop();
  };
  let backoff = INITIAL_BACKOFF_MS;
  let renewedAt = null; // when the token was last renewed after a rejection

  try {
    while (!state.stopping) {
      let ended;
      try {
        if (!session.tokens) await session.logIn();
        const request = { after_sequence: last.toString(), loan_id: options.loanId };
        ended = await watchOnce(events, session, request, onEvent, state);
      } catch (err) {
        ended = { code: err.code, details: err.details || err.message }; // Login failed
      }
      if (state.stopping) break;
      if (ended.code === grpc.status.UNAUTHENTICATED) {
        if (!session.tokens) throw new Error(`UNAUTHENTICATED: ${ended.details}`); // wrong password
        if (renewedAt !== null && Date.now() - renewedAt < MIN_TOKEN_LIFE_MS) {
          throw new Error(`UNAUTHENTICATED: ${ended.details}`);
        }
        try {
          await session.renew();
          renewedAt = Date.now();
          continue; // a fresh token: resume at once
        } catch (err) {
          if (err.code !== grpc.status.UNAVAILABLE) throw err;
          ended = { code: err.code, details: err.details };
        }
      }
      if (ended.code !== grpc.status.UNAVAILABLE && ended.code !== grpc.status.OK) {
        throw new Error(`${grpc.status[ended.code]}: ${ended.details}`);
      }
      const delay = Math.round(backoff * (0.5 + Math.random() / 2)); // jitter
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      console.error(
        `watch_events.js: ${grpc.status[ended.code]}: ${ended.details} (resuming after sequence ${last} in ${delay} ms)`,
      );
      await pause(delay);
    }
  } finally {
    auth.close();
    events.close();
  }
}

main().catch((err) => {
  console.error(`watch_events.js: ${err && err.message ? err.message : err}`);
  process.exit(1);
});
