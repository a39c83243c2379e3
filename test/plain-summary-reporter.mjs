/**
 * Prints the plain closing line "N passed, N failed, N skipped" after Jest's
 * own summary: a format any CI log reader understands.
 */
export default class PlainSummaryReporter {
  onRunComplete(_contexts, results) {
    process.stderr.write(`${results.numPassedTests} passed, ${results.numFailedTests} failed, ${results.numPendingTests} skipped\n`);
  }
}
