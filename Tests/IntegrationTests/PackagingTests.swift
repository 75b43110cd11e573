import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// What a packager and an operator's monitoring get: scripts/install.sh and --uninstall, man pages,
/// completions, systemd units, Prometheus rules and metrics files, shellcheck-clean scripts.
final class PackagingTests: XCTestCase {
    private var cleanup: [String] = []

    override func tearDown() {
        for path in cleanup { try? FileManager.default.removeItem(atPath: path) }
        cleanup = []
    }

    private func temporary(_ prefix: String) -> String {
        let path = TestPaths.temporaryDirectory(prefix: prefix)
        cleanup.append(path)
        return path
    }

    /// Runs a bash script with positional arguments ($1 …), so paths with spaces need no quoting games.
    private func bash(_ script: String, _ arguments: [String] = [], environment: [String: String] = [:]) throws -> TestProcess.Result {
        try TestProcess.run("/bin/bash", ["-c", script, "bash"] + arguments, environment: environment)
    }

    private func requireTool(_ name: String, package: String) throws -> String {
        let result = try bash("command -v \"$1\"", [name])
        guard result.status == 0 else {
            throw NSError(domain: "dbrecovery.tests", code: 1, userInfo: [NSLocalizedDescriptionKey:
                "\(name) is missing: install the Debian package \(package) (scripts/setup.sh does)"])
        }
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func testInstallPutsEveryPieceInPlaceAndUninstallRemovesExactlyThat() throws {
        _ = try requireTool("systemd-analyze", package: "systemd")
        _ = try requireTool("man", package: "man-db")
        let prefix = temporary("prefix") + "/with space"
        // --bin-dir: the suite already built the executables (and holds the build lock while it runs).
        let install = try TestProcess.run("/bin/bash", [TestPaths.repositoryRoot + "/scripts/install.sh", "--prefix", prefix,
                                                        "--bin-dir", TestPaths.productsDirectory])
        XCTAssertEqual(install.status, 0, install.standardError)

        let tools = ["dbbackup", "dbrestore", "dbverify", "dbprune", "dbmigrate"]
        for tool in tools {
            let version = try TestProcess.run(prefix + "/bin/" + tool, ["--help"])
            XCTAssertEqual(version.status, 0, "\(tool) --help: \(version.standardError)")
            let page = try TestProcess.run("/usr/bin/man", ["-M", prefix + "/share/man", "-P", "cat", tool],
                                           environment: ["MANWIDTH": "100", "LC_ALL": "C.UTF-8"])
            XCTAssertEqual(page.status, 0, "man \(tool): \(page.standardError)")
            XCTAssertTrue(page.standardOutput.contains("SYNOPSIS"), "man \(tool) has no SYNOPSIS: \(page.standardOutput.prefix(300))")
            let completion = try bash("source \"$1/share/bash-completion/completions/$2\" && complete -p \"$2\"", [prefix, tool])
            XCTAssertEqual(completion.status, 0, "bash completion for \(tool): \(completion.standardError)")
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(prefix)/share/zsh/site-functions/_\(tool)"))
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(prefix)/share/fish/vendor_completions.d/\(tool).fish"))
        }

        // The units point into the prefix and pass systemd's own checks (man pages found through MANPATH).
        let units = prefix + "/lib/systemd/system"
        let service = try String(contentsOfFile: units + "/dbrecovery-nightly.service", encoding: .utf8)
        XCTAssertTrue(service.contains("ExecStart=\"\(prefix)/share/dbrecovery/scripts/nightly-backup.sh\""), service)
        let verify = try bash("cd \"$1\" && systemd-analyze verify ./*.service ./*.timer", [units],
                              environment: ["MANPATH": prefix + "/share/man"])
        XCTAssertEqual(verify.status, 0, verify.standardError)
        XCTAssertEqual(verify.standardError.trimmingCharacters(in: .whitespacesAndNewlines), "", "systemd-analyze complained")

        // The installed wrapper scripts find the installed binaries without PATH or DBRECOVERY_BIN.
        let found = try bash("source \"$1/share/dbrecovery/scripts/lib.sh\" && dbrecovery_bin dbbackup", [prefix],
                             environment: ["PATH": "/usr/bin:/bin"])
        XCTAssertEqual(found.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines).hasSuffix("/bin/dbbackup"), true, found.standardError)

        // The example config is one every tool accepts.
        let config = try TestProcess.run(prefix + "/bin/dbbackup", ["--print-config", "--config", prefix + "/share/dbrecovery/config.example.toml"])
        XCTAssertEqual(config.status, 0, config.standardError)

        let uninstall = try TestProcess.run("/bin/bash", [TestPaths.repositoryRoot + "/scripts/install.sh", "--uninstall", "--prefix", prefix])
        XCTAssertEqual(uninstall.status, 0, uninstall.standardError)
        let left = try FileManager.default.contentsOfDirectory(atPath: prefix)
        XCTAssertEqual(left, [], "--uninstall left \(left)")

        let again = try TestProcess.run("/bin/bash", [TestPaths.repositoryRoot + "/scripts/install.sh", "--uninstall", "--prefix", prefix])
        XCTAssertEqual(again.status, 2, "a second --uninstall has nothing to remove and says so")
        XCTAssertTrue(again.standardError.contains("nothing to uninstall"), again.standardError)
    }

    /// Binaries copied from another machine that cannot start here (a shared library missing, as
    /// libisal2 would be) are refused before anything is installed: once installed, every
    /// archive_command call would fail and WAL would pile up.
    func testBinariesThatCannotStartHereAreRefusedBeforeAnythingIsInstalled() throws {
        let directory = temporary("copied-binaries")
        // A program linked against a library that is then removed: the dynamic loader refuses it.
        let build = try bash("""
            compiler=$(command -v cc || command -v clang) || { echo "no C compiler (cc or clang)" >&2; exit 1; }
            cd "$1" && echo 'int dbrecovery_gone(void){return 0;}' > gone.c && "$compiler" -shared -fPIC -o libdbrecoverygone.so gone.c &&
            echo 'int dbrecovery_gone(void); int main(void){return dbrecovery_gone();}' > main.c &&
            for tool in dbbackup dbrestore dbverify dbprune dbmigrate; do "$compiler" -o "$tool" main.c -L. -ldbrecoverygone || exit 1; done &&
            rm libdbrecoverygone.so
            """, [directory])
        XCTAssertEqual(build.status, 0, build.standardError)
        let prefix = temporary("refused-prefix")
        let install = try TestProcess.run("/bin/bash", [TestPaths.repositoryRoot + "/scripts/install.sh", "--prefix", prefix, "--bin-dir", directory])
        XCTAssertEqual(install.status, 12, install.standardError)
        XCTAssertTrue(install.standardError.contains("\(directory)/dbbackup does not start on this machine (missing: libdbrecoverygone.so)"), install.standardError)
        XCTAssertTrue(install.standardError.contains("HINT: install its shared libraries"), install.standardError)
        XCTAssertFalse(FileManager.default.fileExists(atPath: prefix + "/bin"), "something was installed")
    }

    func testHelpMatchesTheReviewedSnapshotsBehindTheManualPages() throws {
        for tool in ["dbbackup", "dbrestore", "dbverify", "dbprune", "dbmigrate"] {
            let live = try TestProcess.tool(tool, ["--experimental-dump-help"])
            XCTAssertEqual(live.status, 0, live.standardError)
            let snapshot = try String(contentsOfFile: "\(TestPaths.repositoryRoot)/docs/man/\(tool).help.json", encoding: .utf8)
            XCTAssertEqual(live.standardOutput, snapshot,
                           "\(tool)'s options or help changed: review the change and run scripts/generate-man.sh (it rewrites docs/man)")
            // The rendered top-level help too: it is put together from several commands' help.
            let screen = try TestProcess.tool(tool, ["--help"], environment: ["COLUMNS": "80"])
            XCTAssertEqual(screen.standardOutput, try String(contentsOfFile: "\(TestPaths.repositoryRoot)/docs/man/\(tool).help.txt", encoding: .utf8),
                           "\(tool) --help changed: review it and run scripts/generate-man.sh")
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(TestPaths.repositoryRoot)/docs/man/\(tool).1"))
            let version = try TestProcess.tool(tool, ["--version"])
            XCTAssertEqual(version.status, 0, version.standardError)
            XCTAssertEqual(version.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines), DBRecoveryVersion.current, "\(tool) --version")
        }
    }

    /// `tool --help` is the screen a usage error's HINT points at: it must list every option of what
    /// `tool …` runs (the default subcommand, else the tool itself), and examples that fit 80 columns.
    func testTopLevelHelpShowsEveryOptionOfTheDefaultActionAndItsExamples() throws {
        for tool in ["dbbackup", "dbrestore", "dbverify", "dbprune", "dbmigrate"] {
            let dump = try TestProcess.tool(tool, ["--experimental-dump-help"])
            let root = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(dump.standardOutput.utf8)) as? [String: Any])?["command"] as? [String: Any])
            // The argument parser lists its own `help` among them; it is not one of the tool's.
            let subcommands = (root["subcommands"] as? [[String: Any]] ?? []).filter { $0["commandName"] as? String != "help" }
            let action = (root["defaultSubcommand"] as? String).flatMap { name in subcommands.first { $0["commandName"] as? String == name } } ?? root
            let options = (action["arguments"] as? [[String: Any]] ?? []).filter { $0["shouldDisplay"] as? Bool == true && $0["kind"] as? String != "positional" }
                .compactMap { ($0["preferredName"] as? [String: Any]).map { ($0["kind"] as? String == "short" ? "-" : "--") + ($0["name"] as? String ?? "") } }
            XCTAssertGreaterThan(options.count, tool == "dbmigrate" ? 0 : 5, "\(tool): the default action's options were not found in its dump")
            for spelling in subcommands.isEmpty ? [["--help"]] : [["--help"], ["help"]] {
                let help = try TestProcess.tool(tool, spelling)
                XCTAssertEqual(help.status, 0, help.standardError)
                for option in options {
                    XCTAssertTrue(help.standardOutput.contains(option), "\(tool) \(spelling[0]) does not show \(option):\n\(help.standardOutput)")
                }
                XCTAssertTrue(help.standardOutput.contains("Examples:"), "\(tool) \(spelling[0]) has no examples")
                for name in subcommands.compactMap({ $0["commandName"] as? String }) {
                    XCTAssertTrue(help.standardOutput.contains("  \(name)"), "\(tool) \(spelling[0]) does not list subcommand \(name)")
                }
                assertExamplesFit(help.standardOutput, of: tool)
            }
            // Every subcommand's own --help (dbrestore pitr --help, dbrestore wal-release --help, …) too.
            for path in subcommandPaths(of: root) {
                let help = try TestProcess.tool(tool, path + ["--help"])
                XCTAssertEqual(help.status, 0, help.standardError)
                assertExamplesFit(help.standardOutput, of: ([tool] + path).joined(separator: " "))
            }
        }
    }

    /// Examples run from "Examples:" to the next blank line; none may be wider than 80 columns or
    /// wrap mid-command (a line that does not start with the examples' indentation).
    private func assertExamplesFit(_ help: String, of command: String, file: StaticString = #filePath, line: UInt = #line) {
        let lines = help.split(separator: "\n", omittingEmptySubsequences: false)
        guard let start = lines.firstIndex(where: { $0.hasPrefix("Examples:") }) else { return }
        let examples = lines[(start + 1)...].prefix(while: { !$0.isEmpty })
        for example in examples where example.count > 80 {
            XCTFail("\(command): example wider than 80 columns: \(example)", file: file, line: line)
        }
        for (example, next) in zip(examples, examples.dropFirst()) where !next.hasPrefix("  ") {
            XCTFail("\(command): '\(example)' wraps onto '\(next)'", file: file, line: line)
        }
    }

    /// The names leading to every subcommand in an `--experimental-dump-help` tree, `help` left out.
    private func subcommandPaths(of command: [String: Any]) -> [[String]] {
        (command["subcommands"] as? [[String: Any]] ?? []).flatMap { sub -> [[String]] in
            guard let name = sub["commandName"] as? String, name != "help" else { return [] }
            return [[name]] + subcommandPaths(of: sub).map { [name] + $0 }
        }
    }

    func testAlertRulesLoadAndEveryMetricsFileTheToolsWritePassesPromtool() throws {
        let promtool = try requireTool("promtool", package: "prometheus")
        let rules = try TestProcess.run(promtool, ["check", "rules", TestPaths.repositoryRoot + "/contrib/prometheus/dbrecovery.rules.yml"])
        XCTAssertEqual(rules.status, 0, rules.standardOutput + rules.standardError)

        let cluster = try PostgresCluster.shared()
        let database = try cluster.createDatabase(prefix: "pkg", seed: "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);")
        let repository = temporary("repo") + "/repo"
        let metrics = temporary("metrics") + "/text file"
        try FileManager.default.createDirectory(atPath: metrics, withIntermediateDirectories: true)
        let environment = ["DATABASE_URL": cluster.url(database: database), "BACKUP_REPO": repository,
                           "DBRECOVERY_BIN": TestPaths.productsDirectory, "PGPASSWORD": cluster.password,
                           "METRICS_DIR": metrics, "DRILL_DAY": "always"]
        let nightly = try TestProcess.run("/bin/bash", [TestPaths.repositoryRoot + "/scripts/nightly-backup.sh"], environment: environment)
        XCTAssertEqual(nightly.status, 0, nightly.standardError)
        // A failed run writes metrics too (and keeps the last success time).
        let failed = try TestProcess.tool("dbverify", ["no-such-backup", "--repo", repository, "--metrics-file", metrics + "/dbrecovery_verify.prom"],
                                          cluster: cluster, environment: ["DATABASE_URL": cluster.url(database: database)])
        XCTAssertNotEqual(failed.status, 0)

        let files = try FileManager.default.contentsOfDirectory(atPath: metrics).filter { $0.hasSuffix(".prom") }.sorted()
        XCTAssertEqual(files, ["dbrecovery_backup.prom", "dbrecovery_drill.prom", "dbrecovery_prune.prom", "dbrecovery_verify.prom"])
        for file in files {
            let check = try TestProcess.run(promtool, ["check", "metrics"], input: try Data(contentsOf: URL(fileURLWithPath: metrics + "/" + file)))
            XCTAssertEqual(check.status, 0, "\(file): \(check.standardOutput)\(check.standardError)")
        }
    }

    func testScriptsAreShellcheckClean() throws {
        let shellcheck = try requireTool("shellcheck", package: "shellcheck")
        let scripts = try bash("cd \"$1\" && ls scripts/*.sh scripts/rollback/*.sh .ci/run", [TestPaths.repositoryRoot])
        let paths = scripts.standardOutput.split(separator: "\n").map(String.init)
        XCTAssertGreaterThan(paths.count, 8)
        let check = try bash("cd \"$1\" && shellcheck=$2 && shift 2 && \"$shellcheck\" -x -S warning \"$@\"",
                             [TestPaths.repositoryRoot, shellcheck] + paths)
        XCTAssertEqual(check.status, 0, check.standardOutput + check.standardError)
    }
}
