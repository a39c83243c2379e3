/** Jest runs the TypeScript sources as native ESM (the @actions/* packages are ESM-only). */
export default {
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { useESM: true, tsconfig: 'tsconfig.json' }] },
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  // Integration tests start real sshd fleets; give them room, never retry them.
  testTimeout: 120000,
  maxWorkers: 2,
  reporters: ['default', '<rootDir>/test/plain-summary-reporter.mjs'],
};
