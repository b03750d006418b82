import { defineConfig } from "vitest/config";

// The tests run against a real Herald process (test/global-setup.ts), not mocks.
export default defineConfig({
  test: {
    include: ["test/**/*.test.{ts,tsx}"],
    globalSetup: ["test/global-setup.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
