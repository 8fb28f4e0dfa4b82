// Test credentials, made at test time: a self-signed TLS certificate for the fakes (the openssl CLI:
// node:crypto cannot write X.509), an APNs provider key (.p8: EC P-256 in PKCS#8) and an FCM
// service account (RSA key in a Google service-account JSON file).
import { execFileSync } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** The names the fakes answer for: the real hosts (dialled to 127.0.0.1) and localhost. */
export const FAKE_HOSTS = ['localhost', 'api.push.apple.com', 'api.sandbox.push.apple.com', 'fcm.googleapis.com', 'oauth2.googleapis.com']

export interface TestCredentials {
  dir: string
  /** PEM certificate of the fakes (trust it as the CA) and its file. */
  cert: string
  certFile: string
  key: string
  apns: { keyFile: string; keyId: string; teamId: string; publicKey: string }
  fcm: { serviceAccountFile: string; projectId: string; clientEmail: string; publicKey: string }
}

export function makeTestCredentials(): TestCredentials {
  const dir = mkdtempSync(join(tmpdir(), 'parley-push-creds-'))
  const certFile = join(dir, 'fake.crt')
  const keyFile = join(dir, 'fake.key')
  execFileSync(
    'openssl',
    [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
      '-subj', '/CN=parley-push-fake',
      '-addext', `subjectAltName=${[...FAKE_HOSTS.map((h) => `DNS:${h}`), 'IP:127.0.0.1'].join(',')}`,
      '-keyout', keyFile, '-out', certFile
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] }
  )

  const apnsKey = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const apnsKeyFile = join(dir, 'AuthKey_TESTKEY123.p8')
  writeFileSync(apnsKeyFile, apnsKey.privateKey.export({ type: 'pkcs8', format: 'pem' }))

  const fcmKey = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const projectId = 'parley-test'
  const clientEmail = `push@${projectId}.iam.gserviceaccount.com`
  const serviceAccountFile = join(dir, 'service-account.json')
  writeFileSync(
    serviceAccountFile,
    JSON.stringify({
      type: 'service_account',
      project_id: projectId,
      private_key_id: 'test-key-1',
      private_key: fcmKey.privateKey.export({ type: 'pkcs8', format: 'pem' }),
      client_email: clientEmail,
      client_id: '1234567890',
      token_uri: 'https://oauth2.googleapis.com/token'
    })
  )

  return {
    dir,
    cert: readFileSync(certFile, 'utf8'),
    certFile,
    key: readFileSync(keyFile, 'utf8'),
    apns: {
      keyFile: apnsKeyFile,
      keyId: 'TESTKEY123',
      teamId: 'TEAM123456',
      publicKey: apnsKey.publicKey.export({ type: 'spki', format: 'pem' }).toString()
    },
    fcm: { serviceAccountFile, projectId, clientEmail, publicKey: fcmKey.publicKey.export({ type: 'spki', format: 'pem' }).toString() }
  }
}

/** The push plugin's provider settings that point at the fakes (JSON is valid YAML flow style too). */
export function fakeProviderConfig(creds: TestCredentials, ports: { apns?: number; fcm?: number }): Record<string, unknown> {
  return {
    ...(ports.apns !== undefined
      ? { apns: { keyFile: creds.apns.keyFile, keyId: creds.apns.keyId, teamId: creds.apns.teamId, topic: 'com.example.chat', address: 'localhost', port: ports.apns, caFile: creds.certFile } }
      : {}),
    ...(ports.fcm !== undefined ? { fcm: { serviceAccountFile: creds.fcm.serviceAccountFile, connectTo: `127.0.0.1:${ports.fcm}`, caFile: creds.certFile } } : {})
  }
}
