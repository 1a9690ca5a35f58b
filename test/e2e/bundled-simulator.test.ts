import net from 'node:net';
import { networkInterfaces } from 'node:os';
import axios from 'axios';
import pino from 'pino';
import { loadConfig } from '../../src/config/config';
import { freePort } from '../../src/db/embedded-postgres';
import { startBundledSimulator } from '../../src/simulator/bundled';
import type { Simulator } from '../../src/simulator/simulator';
import { eventually, TEST_SECRET, writePartnersFile } from '../support/service';
import { readBody, startPartnerServer, type TestPartnerServer } from './helpers';

/**
 * Issue 7, item 17: the simulator started beside the service (bundled partners) listens on loopback only
 * and signs callbacks only for the service's own PUBLIC_BASE_URL.
 */

let service: TestPartnerServer;
let elsewhere: TestPartnerServer;
const received: Record<string, number> = { service: 0, elsewhere: 0 };
let sim: Simulator;

beforeAll(async () => {
  service = await startPartnerServer((req, res) => void readBody(req).then(() => ((received.service! += 1), res.end('{"outcome":"applied"}'))));
  elsewhere = await startPartnerServer((req, res) => void readBody(req).then(() => ((received.elsewhere! += 1), res.end('{}'))));
  const config = loadConfig({
    PORT: String(service.port),
    PUBLIC_BASE_URL: service.url,
    PARTNERS_FILE: writePartnersFile([{ id: 'classroom', baseUrl: `http://localhost:${await freePort()}`, callback: { secret: TEST_SECRET } }]),
  });
  sim = await startBundledSimulator(config, pino({ level: 'silent' }));
});
afterAll(async () => {
  await sim?.close();
  await service?.close();
  await elsewhere?.close();
});

const post = (body: unknown) => axios.post(`${sim.url}/requests`, body, { validateStatus: () => true });

test('it listens on 127.0.0.1 only', async () => {
  const url = new URL(sim.url);
  expect(url.hostname).toBe('127.0.0.1');
  const external = Object.values(networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal);
  if (external) {
    const reached = await new Promise<boolean>((resolve) => {
      const socket = net.connect(Number(url.port), external.address);
      socket.once('connect', () => (socket.destroy(), resolve(true)));
      socket.once('error', () => resolve(false));
    });
    expect(reached).toBe(false);
  }
});

test('a dispatch naming a callback URL outside PUBLIC_BASE_URL is refused and nothing is signed for it', async () => {
  for (const callbackUrl of [`${elsewhere.url}/v1/callbacks/classroom`, `http://user@${new URL(service.url).host}/v1/callbacks/classroom`, 'http://evil.example/v1/callbacks/classroom']) {
    const res = await post({ requestNo: `r-${Math.random()}`, payload: { simulate: { callback: { delayMs: 0 } } }, callbackUrl });
    expect(res.status).toBe(400);
  }
  const ok = await post({ requestNo: 'r-ok', payload: { simulate: { callback: { delayMs: 0 } } }, callbackUrl: `${service.url}/v1/callbacks/classroom` });
  expect(ok.status).toBe(202);
  await eventually(async () => (received.service === 1 ? true : undefined), 'the allowed callback');
  expect(received.elsewhere).toBe(0);
});

test('a bundled partner whose baseUrl is not loopback is refused', async () => {
  const config = loadConfig({ PARTNERS_FILE: writePartnersFile([{ id: 'classroom', baseUrl: 'http://10.0.0.1:4010', callback: { secret: TEST_SECRET } }]) });
  await expect(startBundledSimulator(config, pino({ level: 'silent' }))).rejects.toThrow(/loopback/);
});
