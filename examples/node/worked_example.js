#!/usr/bin/env node
// Example Node.js client (@grpc/grpc-js + @grpc/proto-loader) of lending-grpc: it
// runs the worked example (create 5,000,000, pay one week, read outstanding).
//
// Usage: node worked_example.js HOST:PORT
//
// Prints one line per check and exits non-zero on the first failure.
'use strict';

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILES = ['lending/v1/auth.proto', 'lending/v1/billing.proto'];
const DEADLINE_MS = 10000;

function loadServices() {
  const definition = protoLoader.loadSync(PROTO_FILES, {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    enums: String,
    defaults: true,
    longs: String,
  });
  const lending = grpc.loadPackageDefinition(definition).lending.v1;
  return { AuthService: lending.AuthService, BillingService: lending.BillingService };
}

// Promise wrapper around a unary call; rejects with the grpc-js ServiceError.
function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, metadata || new grpc.Metadata(), { deadline }, (err, response) => {
      if (err) reject(err);
      else resolve(response);
    });
  });
}

function check(name, fn) {
  fn();
  console.log(`ok - ${name}`);
}

// Expects the call to fail with the given grpc status code.
async function expectStatus(name, promise, code) {
  let response;
  try {
    response = await promise;
  } catch (err) {
    assert.equal(
      err.code,
      code,
      `${name}: expected status ${grpc.status[code]} (${code}), got ${grpc.status[err.code]} (${err.code}): ${err.details}`,
    );
    console.log(`ok - ${name}: ${grpc.status[code]} (${code}) "${err.details}"`);
    return err;
  }
  assert.fail(`${name}: expected status ${grpc.status[code]} (${code}), got a response: ${JSON.stringify(response)}`);
}

async function main() {
  const target = process.argv[2];
  if (!target) {
    console.error('usage: node worked_example.js HOST:PORT');
    process.exit(2);
  }

  const { AuthService, BillingService } = loadServices();
  const credentials = grpc.credentials.createInsecure();
  const auth = new AuthService(target, credentials);
  const billing = new BillingService(target, credentials);

  try {
    const suffix = crypto.randomUUID().replace(/-/g, '').slice(0, 12);
    const username = `node-${suffix}`;
    const password = 'correct horse battery staple';

    const user = await unary(auth, 'Register', {
      username,
      password,
      email: `${username}@example.com`,
    });
    check('Register returns the user', () => {
      assert.equal(user.username, username);
      assert.ok(user.user_id, 'user_id is empty');
    });

    const tokens = await unary(auth, 'Login', { username, password });
    check('Login returns a Bearer access token', () => {
      assert.ok(tokens.access_token, 'access_token is empty');
      assert.equal(tokens.token_type, 'Bearer');
    });

    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${tokens.access_token}`);

    const loanId = `node-loan-${suffix}`;
    const loan = await unary(
      billing,
      'CreateLoan',
      { loan_id: loanId, principal_amount: '5000000', start_date: '2026-01-05' },
      md,
    );
    check('CreateLoan 5000000: total 5500000.00, weekly 110000.00, final 110000.00, ACTIVE', () => {
      assert.equal(loan.loan_id, loanId);
      assert.equal(loan.total_amount, '5500000.00');
      assert.equal(loan.weekly_payment, '110000.00');
      assert.equal(loan.final_payment, '110000.00');
      assert.equal(loan.state, 'LOAN_STATE_ACTIVE');
      assert.equal(loan.term_weeks, 50);
      assert.equal(loan.start_date, '2026-01-05');
    });

    const payment = await unary(
      billing,
      'MakePayment',
      { loan_id: loanId, amount: '110000.00', request_id: `pay-${suffix}-1` },
      md,
    );
    check('MakePayment 110000.00 covers week 1, balance 5390000.00', () => {
      assert.equal(payment.loan_id, loanId);
      assert.equal(payment.amount, '110000.00');
      assert.equal(payment.first_week, 1);
      assert.equal(payment.last_week, 1);
      assert.equal(payment.outstanding_balance, '5390000.00');
    });

    const outstanding = await unary(billing, 'GetOutstanding', { loan_id: loanId }, md);
    check('GetOutstanding: 5390000.00 outstanding, 1 paid, 49 remaining', () => {
      assert.equal(outstanding.outstanding_balance, '5390000.00');
      assert.equal(outstanding.paid_amount, '110000.00');
      assert.equal(outstanding.total_amount, '5500000.00');
      assert.equal(outstanding.installments_paid, 1);
      assert.equal(outstanding.installments_remaining, 49);
    });

    const schedule = await unary(billing, 'GetSchedule', { loan_id: loanId }, md);
    check('GetSchedule: 50 installments, week 1 paid and due 2026-01-12', () => {
      const items = schedule.installments;
      assert.equal(items.length, 50);
      assert.equal(items[0].week, 1);
      assert.equal(items[0].due_date, '2026-01-12');
      assert.equal(items[0].due_amount, '110000.00');
      assert.equal(items[0].paid, true);
      assert.equal(items[0].payment_id, payment.payment_id);
      assert.equal(items[1].paid, false);
      assert.equal(items[1].due_date, '2026-01-19');
      assert.equal(items[49].week, 50);
      assert.equal(items[49].due_date, '2026-12-21');
    });

    // Error paths.
    await expectStatus(
      'MakePayment of a partial installment 50000.00 is FAILED_PRECONDITION',
      unary(billing, 'MakePayment', { loan_id: loanId, amount: '50000.00' }, md),
      grpc.status.FAILED_PRECONDITION,
    );
    await expectStatus(
      'GetLoan without authorization is UNAUTHENTICATED',
      unary(billing, 'GetLoan', { loan_id: loanId }, new grpc.Metadata()),
      grpc.status.UNAUTHENTICATED,
    );
    await expectStatus(
      'GetLoan of "nope" is NOT_FOUND',
      unary(billing, 'GetLoan', { loan_id: 'nope' }, md),
      grpc.status.NOT_FOUND,
    );

    // The rejected calls recorded nothing.
    const after = await unary(billing, 'GetOutstanding', { loan_id: loanId }, md);
    check('rejected payment recorded nothing: still 5390000.00 outstanding', () => {
      assert.equal(after.outstanding_balance, '5390000.00');
      assert.equal(after.installments_paid, 1);
    });

    // Worked example with a rounding remainder in the final installment.
    const odd = await unary(
      billing,
      'CreateLoan',
      { loan_id: `node-odd-${suffix}`, principal_amount: '1000001', start_date: '2026-01-05' },
      md,
    );
    check('CreateLoan 1000001: total 1100001.10, weekly 22000.02, final 22000.12', () => {
      assert.equal(odd.total_amount, '1100001.10');
      assert.equal(odd.weekly_payment, '22000.02');
      assert.equal(odd.final_payment, '22000.12');
      assert.equal(odd.state, 'LOAN_STATE_ACTIVE');
    });

    console.log('all checks passed');
  } finally {
    auth.close();
    billing.close();
  }
}

main().catch((err) => {
  console.error(`not ok - ${err && err.message ? err.message : err}`);
  if (err && err.stack) console.error(err.stack);
  process.exit(1);
});
