import path from 'node:path';
import express, { Router } from 'express';
import helmet from 'helmet';

/**
 * The console's static files live in `console/` at the repository root: plain ES modules and CSS, no
 * build step. `__dirname` differs between `src/console` (tsx, jest) and `dist/src/console` (npm start).
 */
export const CONSOLE_DIR = path.resolve(__dirname, __dirname.includes(`${path.sep}dist${path.sep}`) ? '../../../console' : '../../console');

/**
 * A strict Content-Security-Policy: scripts, styles and requests only from this origin, no inline script
 * or style, no frames, no form submissions (the sign-in form is handled in script, so a key can never end
 * up in a URL even if the script failed to load).
 */
export const CONSOLE_CSP = {
  'default-src': ["'none'"],
  'script-src': ["'self'"],
  'style-src': ["'self'"],
  'img-src': ["'self'"],
  'connect-src': ["'self'"],
  'manifest-src': ["'self'"],
  'base-uri': ["'none'"],
  'form-action': ["'none'"],
  'frame-ancestors': ["'none'"],
};

/** Serves the operator console at `/console/` (no key needed for the files; the API calls carry it). */
export function consoleRoutes(dir: string = CONSOLE_DIR): Router {
  const router = Router();
  router.use(
    '/console',
    helmet({
      contentSecurityPolicy: { useDefaults: false, directives: CONSOLE_CSP },
      referrerPolicy: { policy: 'no-referrer' },
    }),
    // Revalidated on every load (no hashed file names without a build step), so an upgrade shows at once.
    express.static(dir, { index: 'index.html', maxAge: 0, redirect: true, dotfiles: 'ignore' }),
  );
  return router;
}
