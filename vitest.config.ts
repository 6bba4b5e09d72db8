import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    setupFiles: ['test/support/fast-check.ts'],
    // Integration tests open real loopback sockets; forks keep each file's uWS app in its own process.
    pool: 'forks',
    testTimeout: 20_000,
    hookTimeout: 20_000,
  },
});
