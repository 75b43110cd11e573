import BackupStorage
import Foundation
import RecoveryKit
import TestSupport
import XCTest

/// The cron, pipeline and runbook scripts, configuration and monitoring, against a real cluster.
final class OperationsTests: IntegrationTestCase {
    override func setUpWithError() throws {
        try useDatabase(prefix: "ops", seed: """
            CREATE TABLE users (id int PRIMARY KEY, email text);
            INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 40) g;
            """)
        useLocalRepository()
    }

    private var environment: [String: String] {
        ["DATABASE_URL": cluster.url(database: database), "BACKUP_REPO": repository, "DBRECOVERY_BIN": TestPaths.productsDirectory,
         "PGPASSWORD": cluster.password]
    }

    private func script(_ path: String, _ arguments: [String] = [], environment extra: [String: String] = [:]) throws -> TestProcess.Result {
        try TestProcess.run("/bin/bash", [TestPaths.repositoryRoot + "/scripts/" + path] + arguments,
                            environment: environment.merging(extra) { _, new in new })
    }

    func testNightlyBackupIsSilentOnSuccessWritesMetricsAndSummarisesFailure() throws {
        let metrics = TestPaths.temporaryDirectory(prefix: "metrics")
        let result = try script("nightly-backup.sh", environment: ["METRICS_DIR": metrics, "DRILL_DAY": "always"])
        XCTAssertEqual(result.status, 0, result.standardError)
        XCTAssertEqual(result.standardOutput, "")
        XCTAssertEqual(result.standardError, "", "cron mails any output: success must be silent")
        let backup = try String(contentsOfFile: metrics + "/dbrecovery_backup.prom", encoding: .utf8)
        // Every series names its database: several databases' runs may share one METRICS_DIR.
        let labels = "database=\"\(database!)\",kind=\"logical\",tool=\"dbbackup\""
        XCTAssertTrue(backup.contains("dbrecovery_last_run_success{\(labels)} 1"), backup)
        XCTAssertTrue(backup.contains("dbrecovery_backup_rows{\(labels)} 40"), backup)
        XCTAssertTrue(backup.contains("dbrecovery_last_success_timestamp_seconds"), backup)
        let prune = try String(contentsOfFile: metrics + "/dbrecovery_prune.prom", encoding: .utf8)
        XCTAssertTrue(prune.contains("dbrecovery_prune_kept{repository=\"\(repository!)\",tool=\"dbprune\"} 1"), prune)
        let drill = try String(contentsOfFile: metrics + "/dbrecovery_drill.prom", encoding: .utf8)
        XCTAssertTrue(drill.contains("dbrecovery_last_run_success{database=\"\(database!)\",mode=\"drill\",tool=\"dbrestore\"} 1"), drill)
        let lastSuccess = backup.split(separator: "\n").first { $0.hasPrefix("dbrecovery_last_success_timestamp_seconds") }

        let failed = try script("nightly-backup.sh", environment: ["METRICS_DIR": metrics, "PGPASSWORD": "wrong"])
        XCTAssertEqual(failed.status, ExitStatus.databaseUnavailable.rawValue)
        XCTAssertTrue(failed.standardError.contains("nightly backup FAILED at step 'backup' (exit code 10)"), failed.standardError)
        XCTAssertTrue(failed.standardError.contains("password authentication failed"), failed.standardError)
        XCTAssertFalse(failed.standardError.contains(cluster.password))
        let after = try String(contentsOfFile: metrics + "/dbrecovery_backup.prom", encoding: .utf8)
        XCTAssertTrue(after.contains("dbrecovery_last_run_success{\(labels)} 0"), after)
        XCTAssertTrue(after.contains("dbrecovery_last_exit_code{\(labels)} 10"), after)
        XCTAssertEqual(after.split(separator: "\n").first { $0.hasPrefix("dbrecovery_last_success_timestamp_seconds") }, lastSuccess,
                       "a failure keeps the last success time, so staleness alerts keep working")
    }

    /// The nightly script took `--dry-run --repo X` as nothing: a real backup and a `dbprune --yes`
    /// into $BACKUP_REPO, exit 0. Now an unknown argument or DRILL_DAY is refused before anything
    /// runs, `--dry-run` runs nothing but dbprune's own dry run, and DRILL_DAY=1 means the 1st.
    func testNightlyBackupRefusesWhatItDoesNotTakeAndDryRunsWithoutABackup() throws {
        let backups = { (try? FileManager.default.contentsOfDirectory(atPath: self.repository + "/backups")) ?? [] }
        let wrong = try script("nightly-backup.sh", ["--repo", "/tmp/elsewhere"])
        XCTAssertEqual(wrong.status, ExitStatus.usage.rawValue, wrong.standardError)
        XCTAssertTrue(wrong.standardError.contains("unknown argument '--repo'"), wrong.standardError)
        let badDay = try script("nightly-backup.sh", environment: ["DRILL_DAY": "32"])
        XCTAssertEqual(badDay.status, ExitStatus.usage.rawValue, badDay.standardError)
        XCTAssertTrue(badDay.standardError.contains("DRILL_DAY='32' is not a day of the month"), badDay.standardError)
        XCTAssertEqual(backups(), [], "nothing ran")

        let first = try backup()
        let today = String(Calendar.current.component(.day, from: Date()))   // no leading zero, as an operator writes it
        let dryRun = try script("nightly-backup.sh", ["--dry-run"], environment: ["DRILL_DAY": today])
        XCTAssertEqual(dryRun.status, 0, dryRun.standardError)
        XCTAssertTrue(dryRun.standardOutput.contains("then dbrestore --drill (DRILL_DAY=\(today))"), dryRun.standardOutput)
        XCTAssertTrue(dryRun.standardOutput.contains(first), "dbprune's plan lists the backup: \(dryRun.standardOutput)")
        XCTAssertEqual(backups(), [first], "a dry run takes no backup")

        let failed = try script("nightly-backup.sh", environment: ["PGPASSWORD": "wrong"])
        XCTAssertTrue(failed.standardError.contains("No step completed before it."), failed.standardError)
    }

    func testPreDeploySnapshotPrintsThePinnedTaggedBackup() throws {
        let result = try script("pre-deploy-snapshot.sh", ["--release", "v1.3.0"])
        XCTAssertEqual(result.status, 0, result.standardError)
        let id = result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        let manifest = try BackupManifest.decode(try Data(contentsOf: URL(fileURLWithPath: "\(repository!)/backups/\(id)/manifest.json")), source: id)
        XCTAssertEqual(manifest.tags, ["pre-deploy"])
        XCTAssertEqual(manifest.release, "v1.3.0")
        XCTAssertTrue(manifest.pinned)

        let json = try script("pre-deploy-snapshot.sh", ["--release", "v1.3.1", "--json"])
        XCTAssertEqual(json.status, 0, json.standardError)
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(json.standardOutput.utf8)) as? [String: Any])?["release"] as? String, "v1.3.1")

        let swallowed = try script("pre-deploy-snapshot.sh", ["--release", "--json"])
        XCTAssertEqual(swallowed.status, ExitStatus.usage.rawValue, "--json is not a release name: \(swallowed.standardError)")
        XCTAssertTrue(swallowed.standardError.contains("--release needs a value"), swallowed.standardError)

        let missing = try script("pre-deploy-snapshot.sh")
        XCTAssertEqual(missing.status, ExitStatus.usage.rawValue)
        XCTAssertTrue(missing.standardError.contains("--release"), missing.standardError)
    }

    /// The pipeline's snapshot during the nightly backup waits for its repository lock (15m by
    /// default) instead of failing the deploy at once.
    func testPreDeploySnapshotWaitsWhileTheNightlyBackupHoldsTheRepository() throws {
        let lock = try LocalStore(root: repository, create: true).lock(holder: LockHolder(command: "dbbackup --tag nightly", pid: 4242, host: "db1"))
        defer { try? lock.release() }
        let process = try ChildProcess(executable: "/bin/bash", arguments: [TestPaths.repositoryRoot + "/scripts/pre-deploy-snapshot.sh", "--release", "v1.3.0"],
                                       environment: environment, stdin: .null, stdout: .pipe, stderr: .pipe)
        let output = OutputCollector(descriptor: process.standardOutput, limit: 1 << 16)
        let errors = OutputCollector(descriptor: process.standardError, limit: 1 << 16)
        let deadline = Date().addingTimeInterval(60)
        while !errors.soFar.contains("waiting up to 15 min for the repository lock") && !errors.ended && Date() < deadline { usleep(20_000) }
        XCTAssertTrue(errors.soFar.contains("waiting up to 15 min for the repository lock") && errors.soFar.contains("pid 4242 on db1"), errors.soFar)
        try lock.release()
        let termination = process.waitForExit(within: 60, orFail: "the snapshot did not go on once the lock was released: \(errors.soFar)")
        XCTAssertEqual(termination.exitCode, 0, errors.finish())
        let id = output.finish().trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(try manifest(id).tags, ["pre-deploy"])

        let bad = try script("pre-deploy-snapshot.sh", ["--release", "v1.3.1", "--lock-wait", "--json"])
        XCTAssertEqual(bad.status, ExitStatus.usage.rawValue, bad.standardError)
        XCTAssertTrue(bad.standardError.contains("--lock-wait needs a duration"), bad.standardError)
    }

    func testRunbookRollbackDryRunChangesNothingAndEmergencyRestoresThatRelease() throws {
        let migrations = TestPaths.temporaryDirectory(prefix: "migrations")
        try "CREATE TABLE a (x int);".write(toFile: migrations + "/0001_a.up.sql", atomically: true, encoding: .utf8)
        try "DROP TABLE a;".write(toFile: migrations + "/0001_a.down.sql", atomically: true, encoding: .utf8)
        try "CREATE TABLE b (x int);".write(toFile: migrations + "/0002_b.up.sql", atomically: true, encoding: .utf8)
        try "DROP TABLE b;".write(toFile: migrations + "/0002_b.down.sql", atomically: true, encoding: .utf8)
        let migrate = { (arguments: [String]) in
            try TestProcess.tool("dbmigrate", arguments + ["--dir", migrations], environment: self.environment)
        }
        // The README's pipeline, twice: snapshot labelled with the release about to be deployed, then its migrations.
        let beforeFirst = try script("pre-deploy-snapshot.sh", ["--release", "v1.2.3"])
        XCTAssertEqual(beforeFirst.status, 0, beforeFirst.standardError)
        XCTAssertEqual(try migrate(["up", "--to", "1", "--release", "v1.2.3"]).status, 0)
        let snapshot = try script("pre-deploy-snapshot.sh", ["--release", "v1.3.0"])
        XCTAssertEqual(snapshot.status, 0, snapshot.standardError)
        let ofV123 = snapshot.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(try migrate(["up", "--release", "v1.3.0"]).status, 0)
        // v1.2.3's state is the snapshot taken before v1.3.0's migrations, not the one labelled v1.2.3 (the state before it).
        let chosen = try tool("dbrestore", ["--emergency", "--release", "v1.2.3", "--dry-run", "--json"] + common)
        XCTAssertEqual(chosen.status, 0, chosen.standardError)
        let choice = (try? JSONSerialization.jsonObject(with: Data(chosen.standardOutput.utf8))) as? [String: Any] ?? [:]
        XCTAssertEqual(choice["backup_id"] as? String, ofV123, chosen.standardOutput)
        XCTAssertEqual(choice["backup_running_releases"] as? [String], ["v1.2.3"], chosen.standardOutput)
        XCTAssertEqual(choice["backup_release"] as? String, "v1.3.0", chosen.standardOutput)

        let plan = try script("rollback/database-rollback.sh", ["--version", "v1.2.3", "--dry-run"], environment: ["MIGRATIONS_DIR": migrations])
        XCTAssertEqual(plan.status, 0, plan.standardError)
        XCTAssertTrue(plan.standardOutput.contains("downgrade from version 2 to 1") && plan.standardOutput.contains("DROP TABLE b;"), plan.standardOutput)
        XCTAssertEqual(try cluster.scalar("SELECT max(version) FROM schema_version", database: database), "2", "--dry-run changes nothing")
        XCTAssertEqual(try cluster.scalar("SELECT to_regclass('b') IS NOT NULL", database: database), "t")

        let rollback = try script("rollback/database-rollback.sh", ["--version", "v1.2.3"], environment: ["MIGRATIONS_DIR": migrations])
        XCTAssertEqual(rollback.status, 0, rollback.standardError)
        XCTAssertEqual(try cluster.scalar("SELECT version FROM schema_version ORDER BY applied_at DESC LIMIT 1", database: database), "1")

        try cluster.connect(database: database).execute(script: "DELETE FROM users; DROP TABLE a; DELETE FROM schema_version")
        let emergency = try script("rollback/database-rollback.sh", ["--version", "v1.2.3", "--emergency"])
        XCTAssertEqual(emergency.status, 0, emergency.standardError)
        XCTAssertTrue(emergency.standardOutput.contains("from backup \(ofV123)"), emergency.standardOutput)
        XCTAssertEqual(try cluster.scalar("SELECT count(*) FROM users", database: database), "40")
        XCTAssertEqual(try cluster.scalar("SELECT max(version) FROM schema_version", database: database), "1", "not v1.2.3's schema")
        XCTAssertEqual(try cluster.scalar("SELECT to_regclass('a') IS NOT NULL AND to_regclass('b') IS NULL", database: database), "t")

        // That snapshot lost: the one labelled v1.2.3 (taken before its migrations, no log then) is not
        // v1.2.3's state; refused, naming it and the way by id, rather than restoring the release before.
        try FileManager.default.removeItem(atPath: "\(repository!)/backups/\(ofV123)/dump.sql.gz")
        let without = try tool("dbrestore", ["--emergency", "--release", "v1.2.3", "--dry-run"] + common)
        XCTAssertEqual(without.status, ExitStatus.backupNotFound.rawValue, without.standardError)
        XCTAssertTrue(without.standardError.contains("name the release about to be deployed"), without.standardError)

        let procedures = try script("rollback/backup-procedures.sh", ["list"])
        XCTAssertEqual(procedures.status, 0, procedures.standardError)
        XCTAssertTrue(procedures.standardOutput.contains("v1.2.3"), procedures.standardOutput)
        XCTAssertEqual(try script("rollback/backup-procedures.sh", ["bogus"]).status, 2)
    }

    func testTheNewcomerTourRunsToCompletion() throws {
        let result = try TestProcess.run("/bin/bash", [TestPaths.repositoryRoot + "/scripts/try.sh"],
                                         environment: ["DBRECOVERY_BIN": TestPaths.productsDirectory, "DATABASE_URL": "", "BACKUP_REPO": ""])
        XCTAssertEqual(result.status, 0, result.standardError + result.standardOutput.suffix(2000))
        for expected in ["backup id:", "dbprune --dry-run", "restored app from backup", "matches backup", "downgraded from 5 to 4", "app_pre_restore_"] {
            XCTAssertTrue((result.standardOutput + result.standardError).contains(expected), "missing '\(expected)'")
        }
    }

    func testPrintConfigNeverShowsASecretAndFollowsPrecedence() throws {
        let config = TestPaths.temporaryDirectory(prefix: "config") + "/config.toml"
        try """
            database_url = "postgresql://filer:file-secret-pw@db9/fromfile"
            repo = "/srv/from-file"
            [s3]
            region = "eu-north-1"
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let secrets = ["DATABASE_URL": "postgresql://app:url-secret-pw@db1/app", "PGPASSWORD": "pg-secret-pw",
                       "AWS_SECRET_ACCESS_KEY": "aws-secret-key", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE123", "AWS_SESSION_TOKEN": "session-secret"]
        let commands: [(String, [String])] = [("dbbackup", []), ("dbrestore", []), ("dbrestore", ["list"]), ("dbverify", []),
                                              ("dbprune", []), ("dbmigrate", ["status"]), ("dbbackup", ["wal-push", "x"])]
        for (tool, arguments) in commands {
            let result = try TestProcess.tool(tool, arguments + ["--print-config", "--config", config], environment: secrets)
            XCTAssertEqual(result.status, 0, "\(tool) \(arguments): \(result.standardError)")
            for secret in ["url-secret-pw", "pg-secret-pw", "aws-secret-key", "session-secret", "file-secret-pw"] {
                XCTAssertFalse(result.standardOutput.contains(secret) || result.standardError.contains(secret), "\(tool) printed \(secret)")
            }
        }
        let precedence = try TestProcess.tool("dbbackup", ["--print-config", "--config", config, "--repo", "/srv/from-flag"],
                                              environment: ["DATABASE_URL": "", "BACKUP_REPO": "/srv/from-env"])
        XCTAssertTrue(precedence.standardOutput.contains("/srv/from-flag") && precedence.standardOutput.contains("flag --repo"), precedence.standardOutput)
        XCTAssertTrue(precedence.standardOutput.contains("postgresql://filer:****@db9/fromfile"), precedence.standardOutput)
        XCTAssertTrue(precedence.standardOutput.contains("eu-north-1"), precedence.standardOutput)
        let fromEnvironment = try TestProcess.tool("dbbackup", ["--print-config", "--config", config], environment: ["BACKUP_REPO": "/srv/from-env"])
        XCTAssertTrue(fromEnvironment.standardOutput.contains("environment BACKUP_REPO"), fromEnvironment.standardOutput)

        let typo = TestPaths.temporaryDirectory(prefix: "config") + "/bad.toml"
        try "repo_path = \"/x\"\n".write(toFile: typo, atomically: true, encoding: .utf8)
        let bad = try TestProcess.tool("dbrestore", ["list", "--config", typo])
        XCTAssertEqual(bad.status, ExitStatus.configuration.rawValue)
        XCTAssertTrue(bad.standardError.contains("unknown key repo_path"), bad.standardError)
    }

    func testFailuresArePostedToTheNotifyURL() throws {
        let receiver = try NotifyReceiver()
        let result = try TestProcess.tool("dbbackup", ["--notify-url", receiver.url, "--repo", repository,
                                                       "--database-url", cluster.url(database: database)],
                                          environment: ["PGPASSWORD": "wrong"])
        XCTAssertEqual(result.status, ExitStatus.databaseUnavailable.rawValue)
        let event = try JSONSerialization.jsonObject(with: Data(receiver.received.utf8)) as? [String: Any]
        XCTAssertEqual(event?["tool"] as? String, "dbbackup")
        XCTAssertEqual(event?["status"] as? String, "failure")
        XCTAssertEqual(event?["exit_code"] as? Int, 10)
        XCTAssertTrue((event?["message"] as? String)?.contains("password authentication failed") ?? false)
    }

    /// A notify URL that is no URL was dropped without a word, so failure notices were lost unseen.
    /// Every run now says so at its start (without printing the URL, which may hold a token), and goes on.
    func testANotifyURLThatIsNoURLIsSaidAtTheStartOfEveryRun() throws {
        for broken in ["http://hooks example.com/x?token=s3cret", "http://[::1", "hooks.example.com/x"] {
            let result = try TestProcess.tool("dbbackup", ["--notify-url", broken, "--repo", repository, "--database-url", cluster.url(database: database)],
                                              cluster: cluster)
            XCTAssertEqual(result.status, 0, result.standardError)
            XCTAssertTrue(result.standardError.contains("warning: --notify-url is not an http(s) URL, so failure notices cannot be sent"), result.standardError)
            XCTAssertFalse(result.standardError.contains("s3cret"), result.standardError)
        }
        let fromEnvironment = try TestProcess.tool("dbprune", ["--repo", repository, "--dry-run"], cluster: cluster,
                                                   environment: ["DBRECOVERY_NOTIFY_URL": "mailto:ops@example.com"])
        XCTAssertTrue(fromEnvironment.standardError.contains("warning: DBRECOVERY_NOTIFY_URL is not an http(s) URL"), fromEnvironment.standardError)
    }
}
