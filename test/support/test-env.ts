/** Names of the variables global setup hands to the test workers. */
export const TEST_ENV = {
  adminUrl: 'CR_TEST_ADMIN_URL',
  template: 'CR_TEST_TEMPLATE',
  runId: 'CR_TEST_RUN_ID',
} as const;

export interface TestDatabaseServer {
  kind: 'TEST_DATABASE_URL' | 'testcontainers' | 'embedded';
  adminUrl: string;
  stop(): Promise<void>;
}
