import { defineConfig } from 'vitest/config';

/**
 * The integration tests run with the gateway in one thread (WORKERS=1) and in two worker threads
 * (WORKERS=2; test/support/gateway.ts testEnv). A worker thread costs about a second of CPU to start
 * under tsx, once per gateway, so npm test runs with WORKERS=2 the files whose behaviour crosses
 * threads (workers.test.ts sets WORKERS=2 itself); TEST_EVERY_CORE=all runs every integration file so.
 */
const EVERY_CORE =
  process.env.TEST_EVERY_CORE === 'all'
    ? ['test/integration/**/*.test.ts']
    : ['draining', 'session-log', 'memory-budget', 'admission', 'native-uws', 'client-identity', 'provisioning'].map((f) => `test/integration/${f}.test.ts`);

export default defineConfig({
  test: {
    setupFiles: ['test/support/fast-check.ts'],
    // Integration tests open real loopback sockets; forks keep each file's uWS app in its own process.
    pool: 'forks',
    testTimeout: 20_000,
    hookTimeout: 20_000,
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts', 'test/operations/**/*.test.ts', 'test/deploy/**/*.test.ts'] } },
      { extends: true, test: { name: 'integration', include: ['test/integration/**/*.test.ts'], env: { WORKERS: '1' } } },
      // A real Chromium (Debian's) against a real gateway: one file at a time, audio runs in real time.
      {
        extends: true,
        test: {
          name: 'browser',
          include: ['test/browser/**/*.test.ts'],
          env: { WORKERS: '1' },
          testTimeout: 60_000,
          hookTimeout: 60_000,
          // After the other projects and one file at a time, so that real-time audio does not compete for the cores.
          sequence: { groupOrder: 1 },
          fileParallelism: false,
        },
      },
      {
        extends: true,
        test: { name: 'integration (WORKERS=2)', include: EVERY_CORE, exclude: ['test/integration/workers.test.ts', 'test/integration/compiled-build.test.ts'], env: { WORKERS: '2' } },
      },
    ],
  },
});
