/**
 * The gitleaks version vm-sync pins: the Action installs it when none is
 * given, and doctor compares the runner host's with it. Its own module so the
 * CLI can name it without bundling the installer's download client.
 */
export const DEFAULT_GITLEAKS_VERSION = '8.30.1';
