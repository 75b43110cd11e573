@testable import BackupStorage
import Foundation
import XCTest

final class S3SettingsTests: XCTestCase {
    func testEnvironmentCredentialsRegionEndpointAndPartSize() throws {
        let configuration = try S3Settings.configuration(bucket: "acme", environment: [
            "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "token",
            "AWS_REGION": "eu-central-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "DBRECOVERY_S3_PART_SIZE_MB": "8",
            "DBRECOVERY_S3_SSE": "aws:kms", "DBRECOVERY_S3_KMS_KEY_ID": "key-1",
        ])
        XCTAssertEqual(configuration.credentials, AWSCredentials(accessKeyID: "AKID", secretAccessKey: "secret", sessionToken: "token"))
        XCTAssertEqual(configuration.region, "eu-central-1")
        XCTAssertEqual(configuration.endpoint?.absoluteString, "http://127.0.0.1:9000")
        XCTAssertTrue(configuration.pathStyle)
        XCTAssertEqual(configuration.partSize, 8 * 1024 * 1024)
        XCTAssertEqual(configuration.serverSideEncryption, "aws:kms")
    }

    func testCredentialsFileProfiles() throws {
        let path = NSTemporaryDirectory() + "credentials-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        try """
            [default]
            aws_access_key_id = DEFAULTKEY
            aws_secret_access_key = defaultsecret

            [backup]
            aws_access_key_id=BACKUPKEY
            aws_secret_access_key=backup/secret+x
            aws_session_token = tok
            """.write(toFile: path, atomically: true, encoding: .utf8)
        let chosen = try S3Settings.configuration(bucket: "acme", environment: ["AWS_SHARED_CREDENTIALS_FILE": path, "AWS_PROFILE": "backup"])
        XCTAssertEqual(chosen.credentials, AWSCredentials(accessKeyID: "BACKUPKEY", secretAccessKey: "backup/secret+x", sessionToken: "tok"))
        let fallback = try S3Settings.configuration(bucket: "acme", environment: ["AWS_SHARED_CREDENTIALS_FILE": path])
        XCTAssertEqual(fallback.credentials.accessKeyID, "DEFAULTKEY")
        XCTAssertFalse(chosen.pathStyle, "AWS itself: virtual-hosted")
    }

    func testBadValuesAreRefusedWithTheFix() {
        let base = ["AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B"]
        for (name, value) in [("DBRECOVERY_S3_PART_SIZE_MB", "4"), ("DBRECOVERY_S3_SSE", "BOGUS"), ("AWS_ENDPOINT_URL_S3", "ftp://x")] {
            XCTAssertThrowsError(try S3Settings.configuration(bucket: "acme", environment: base.merging([name: value]) { $1 }), name)
        }
        XCTAssertThrowsError(try S3Settings.configuration(bucket: "acme", environment: ["AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"])) { error in
            XCTAssertTrue((error as? StorageError)?.hint?.contains("AWS_ACCESS_KEY_ID") ?? false)
        }
    }

    func testPathStyleAndVirtualHostedAddresses() throws {
        let credentials = AWSCredentials(accessKeyID: "A", secretAccessKey: "B")
        let aws = S3Client(S3Configuration(bucket: "acme", region: "eu-west-1", credentials: credentials))
        let (url, host, path) = try aws.address(key: "prod/backups/a b+c", query: [("partNumber", "2"), ("uploadId", "x/y")])
        XCTAssertEqual(host, "acme.s3.eu-west-1.amazonaws.com")
        XCTAssertEqual(path, "/prod/backups/a%20b%2Bc")
        XCTAssertEqual(url.absoluteString, "https://acme.s3.eu-west-1.amazonaws.com/prod/backups/a%20b%2Bc?partNumber=2&uploadId=x%2Fy")

        let local = S3Client(S3Configuration(bucket: "acme", endpoint: URL(string: "http://127.0.0.1:9000"), credentials: credentials))
        let (localURL, localHost, localPath) = try local.address(key: "k", query: [("uploads", "")])
        XCTAssertEqual(localHost, "127.0.0.1:9000")
        XCTAssertEqual(localPath, "/acme/k")
        XCTAssertEqual(localURL.absoluteString, "http://127.0.0.1:9000/acme/k?uploads")
    }
}
